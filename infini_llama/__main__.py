"""`python -m infini_llama ...` (what torchrun runs) is the `infini-llama` command."""

import sys

from infini_llama.cli import main

sys.exit(main())
