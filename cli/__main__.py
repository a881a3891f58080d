"""``python -m cli`` (and so ``torchrun -m cli``) runs the same command as ``linreg``."""

from cli.app import main

if __name__ == "__main__":
    main()
