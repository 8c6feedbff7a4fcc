"""`python export.py`: config, dispatch and exit codes for the export stage (tierkit.stages.export).

The stage is imported after Hydra has composed the config, so a mistyped key or option is reported at once.
"""

import logging
import sys

import hydra
from omegaconf import DictConfig

import tierkit.utils.resolvers  # noqa: F401  (registers the config resolvers)
from tierkit.cli import import_from_working_folder
from tierkit.conf import CONFIG_DIR
from tierkit.errors import TierkitError
from tierkit.utils.noise import silence_known_noise

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="export")
def main(cfg: DictConfig) -> None:
    silence_known_noise()
    import_from_working_folder()
    from tierkit.stages.export import export

    try:
        export(cfg)
    except TierkitError as exc:
        log.error("%s", exc.render())
        sys.exit(2)


if __name__ == "__main__":
    main()
