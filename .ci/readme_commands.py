"""Print the README's two commands for a fresh machine, one a line (read by .ci/run).

They are the ``bash`` blocks of the section "Two commands on a fresh machine", each one line.
"""

import re
from pathlib import Path

text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
section = re.search(r"^## Two commands on a fresh machine\n(.*?)(?=^## )", text, re.M | re.S)
assert section, "README.md has no section 'Two commands on a fresh machine'"
blocks = re.findall(r"^```bash\n(.*?)^```", section.group(1), re.M | re.S)
assert len(blocks) == 2, f"the section has {len(blocks)} bash blocks, not 2"
for block in blocks:
    assert block.count("\n") == 1, f"a README command must be one line:\n{block}"
    print(block.strip())
