from dfdtrain.cli import main

raise SystemExit(main())
