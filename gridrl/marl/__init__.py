"""Multi-agent learners on the agent graph: ``dppo``, ``ippo``, ``cppo``, and what they share.

One file per algorithm (:mod:`~gridrl.marl.dppo`, :mod:`~gridrl.marl.ippo`,
:mod:`~gridrl.marl.cppo`), each a config dataclass and a learner whose iteration reads top to
bottom. What they share is tested on its own and built for a model-based learner to reuse:

- :mod:`~gridrl.marl.graph` — κ-hop neighbourhoods as pair lists, message delivery under dropout,
  pooling and neighbourhood sums (linear in the number of neighbour pairs);
- :mod:`~gridrl.marl.normalize` — masked running observation statistics, per-agent reward scale;
- :mod:`~gridrl.marl.gae` — generalized advantage estimation over any trailing shape;
- :mod:`~gridrl.marl.nets` — shared-weight networks with an agent embedding over κ-hop inputs;
- :mod:`~gridrl.marl.policy` — the trained policy, a controller that never reads the environment;
- :mod:`~gridrl.marl.buffer` — rollout storage; :mod:`~gridrl.marl.ppo` — PPO's loss pieces;
- :mod:`~gridrl.marl.checkpoint` — atomic checkpoints with a validated header;
- :mod:`~gridrl.marl.train` — the train driver (progress, CSV and TensorBoard scalars, resume,
  NaN guard, evaluation); :mod:`~gridrl.marl.run` — run folders as controllers.
"""

from gridrl.marl.run import load_policy, open_run
from gridrl.marl.train import ALGORITHMS, TrainConfig, TrainError, TrainingDiverged, resolve_train_config, train

__all__ = ["ALGORITHMS", "TrainConfig", "TrainError", "TrainingDiverged", "load_policy", "open_run",
           "resolve_train_config", "train"]
