import sys

try:
    from .cli import main

    code = main()
except KeyboardInterrupt:  # Ctrl-C before or after main's own handler
    code = 130
sys.exit(code)
