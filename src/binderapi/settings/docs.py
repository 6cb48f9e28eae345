"""Write the generated configuration reference: ``python -m binderapi.settings.docs [path]``."""

import sys
from pathlib import Path

from .dump import configuration_reference

if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/configuration.md")
    target.write_text(configuration_reference())
    print(f"wrote {target}")
