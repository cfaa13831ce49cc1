"""`python -m ssbench ...`: the CLI, also as torchrun starts it (`torchrun --nproc-per-node N -m ssbench train ... --gpus N`)."""
from ssbench.cli import main

if __name__ == "__main__":
    main()
