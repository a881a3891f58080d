"""linreg's command line: options, files and output. The math lives in ``regression``."""
