"""`python -m mobilevlm_agent.train` / `torchrun -m mobilevlm_agent.train RECIPE --out RUN_DIR`."""
import sys

from mobilevlm_agent.errors import MobileVLMError
from mobilevlm_agent.train.loop import main

try:
    sys.exit(main())
except MobileVLMError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
