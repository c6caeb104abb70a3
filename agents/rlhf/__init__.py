"""``textgym rlhf``: the InstructGPT loop, iterated (see [agents.rlhf.loop][agents.rlhf.loop]).

```python
from agents.rlhf import RLHFConfig, run_rlhf

rows = run_rlhf(RLHFConfig(task="positivity", rounds=3, labels_per_round=64, raters="sim:3", out="runs/rlhf"))
```
"""

from agents.rlhf.config import RLHFConfig
from agents.rlhf.loop import run_rlhf

__all__ = ["RLHFConfig", "run_rlhf"]
