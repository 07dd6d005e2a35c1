"""A user's config folders join Hydra's search path, from the environment:

    CAPTIONING_CONFIG_PATH=/path/to/my_conf[:/another] python run.py decoder=my_lstm

Each folder holds group folders as ``conf/`` does (``decoder/my_lstm.yaml``, ...), so its options
are picked by name like the built-in ones. The same as ``hydra.searchpath=[file:///path/to/my_conf]``
on the command line (Hydra's own key), for a user who sets it once in the shell. The folders are
searched after ``conf/``: an option of the same name as a built-in one is not picked (name yours
differently).
"""

from __future__ import annotations

import os
from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

ENV = "CAPTIONING_CONFIG_PATH"


class UserConfigPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        for folder in os.environ.get(ENV, "").split(os.pathsep):
            if folder.strip():
                search_path.append(provider="captioning-user",
                                   path=f"file://{Path(folder).expanduser().resolve()}")
