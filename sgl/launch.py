"""``python -m sgl.launch [+experiment=NAME] [group=option ...] [key=value ...]``

Composes the Hydra config under ``configs/``. With ``+experiment=NAME`` it runs
``experiments/NAME.py``'s ``main(engine_config)``; without, it serves the
engine over HTTP (``server.host``, ``server.port``).
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from sgl.core.config import CONFIG_DIR, EngineConfig, to_engine_config
from sgl.server.serve import serve_config

EXPERIMENTS_DIR = Path(__file__).resolve().parent.parent / "experiments"


def run_experiment(cfg: EngineConfig) -> None:
    """Import ``experiments/<experiment.name>.py`` and call its ``main(cfg)``.

    Raises:
        ValueError: when the experiment has no name or no such file exists.
    """
    name = (cfg.experiment or {}).get("name")
    path = EXPERIMENTS_DIR / f"{name}.py"
    if not name or not path.is_file():
        known = sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.py") if not p.stem.startswith("_"))
        raise ValueError(f"unknown experiment {name!r}; known: {known}")
    spec = importlib.util.spec_from_file_location(f"sgl_experiment_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(EXPERIMENTS_DIR))
    spec.loader.exec_module(module)
    module.main(cfg)


@hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base=None)
def main(dcfg: DictConfig) -> None:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", force=True)
    cfg = to_engine_config(dcfg)
    if cfg.experiment:
        run_experiment(cfg)
    else:
        serve_config(cfg)


if __name__ == "__main__":
    main()
