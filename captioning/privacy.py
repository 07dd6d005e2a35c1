"""No phoning home: a run talks to no host but this one unless the user asked for it.

Kangas and comet_ml contact outside hosts on their own, even for a run that only writes files:
``import kangas`` POSTs a session id and version details to stats.comet.com (with no timeout:
a stall of minutes where outbound traffic is dropped), and every Comet experiment, offline ones
included, probes the cloud metadata address 169.254.169.254 and opens a socket towards
www.comet.com to learn this machine's IP. Both libraries read switches from the environment
when they are imported or an experiment starts, so ``no_phone_home()`` sets them first, in every
entry point (run.py, eval.py, caption.py, ``python -m captioning.review|browse|export|compare``)
and in ``captioning/tracking/comet.py`` as a safety net.

``os.environ.setdefault``: a value the user exported wins, so each can be switched back on, e.g.
``COMET_AUTO_LOG_ENV_DETAILS=true python run.py`` (an environment variable also overrides the
same key in ~/.comet.config). An online Comet experiment (an API key is configured) still talks
to the Comet server it logs to; nothing else does.
"""

from __future__ import annotations

import os

SETTINGS = {
    # kangas/utils.py, run by `import kangas` (and by each `kangas server`): a POST of a session
    # id, the Kangas, Python and Node versions and the OS to https://stats.comet.com/notify/event/
    # without a timeout.
    "KANGAS_VERSION_CHECK": "0",
    # Kangas's web page is a Next.js app: Next.js's anonymous usage telemetry.
    "NEXT_TELEMETRY_DISABLED": "1",
    # comet_ml/error_tracking, set up by `import comet_ml`: Sentry reports of Comet's internal
    # errors (with environment details) to sentry.io.
    "COMET_ERROR_TRACKING_ENABLE": "false",
    # comet_ml/env_logging.py, at every experiment's start, offline ones included: three HTTP
    # probes of the cloud metadata service 169.254.169.254 (AWS, Azure, GCP instance documents),
    # a UDP socket "connected" to www.comet.com to read this host's IP, and the threads that
    # sample CPU/GPU/disk/network use. (The pip and OS package lists it also gathers are local;
    # captioning/tracking/comet.py logs those itself.)
    "COMET_AUTO_LOG_ENV_DETAILS": "false",
    # comet_ml/connection: reports of the SDK's own failures (tracebacks, with the API key in the
    # payload) and usage events to Comet's notify endpoint, e.g. when an experiment cannot start.
    "COMET_INTERNAL_REPORTING": "false",
    # comet_ml + codecarbon (when installed): the CO2 tracker looks this machine's location up
    # online (get.geojs.io).
    "COMET_AUTO_LOG_CO2": "false",
}


def no_phone_home() -> None:
    """Set the switches above (unless already set); call before Kangas or Comet is imported."""
    for name, value in SETTINGS.items():
        os.environ.setdefault(name, value)
