# Sourced by the launch and Slurm scripts: find_dfdtrain_python prints the interpreter that has dfdtrain, so a
# launcher works right after the README's set-up command without an activated venv. It tries, in order:
#   PYTHON                 when set, only that one
#   $VIRTUAL_ENV/bin/python  an activated venv
#   the `dfdtrain` command's interpreter (its #! line), when it is on PATH
#   <repo>/.venv/bin/python  what the README's set-up command makes
#   python3
find_dfdtrain_python() {
  local repo candidates=() command_path shebang candidate
  repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  if [ -n "${PYTHON:-}" ]; then
    candidates=("$PYTHON")
  else
    if [ -n "${VIRTUAL_ENV:-}" ]; then candidates+=("$VIRTUAL_ENV/bin/python"); fi
    if command_path="$(command -v dfdtrain 2>/dev/null)"; then
      shebang="$(head -n 1 "$command_path")"
      case "$shebang" in "#!/"*) candidates+=("${shebang#\#!}") ;; esac
    fi
    candidates+=("$repo/.venv/bin/python" python3)
  fi
  for candidate in "${candidates[@]}"; do
    # from / : in the repository, "import dfdtrain" would find the source tree whatever is installed
    if (cd / && "$candidate" -c "import torch, dfdtrain") >/dev/null 2>&1; then
      echo "$candidate"
      return 0
    fi
  done
  echo "launch: no Python that can import torch and dfdtrain (tried: ${candidates[*]}); run the README's set-up" \
       "command (it makes .venv), activate a venv that has dfdtrain, or set PYTHON=/path/to/python" >&2
  return 1
}
