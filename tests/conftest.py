# The runner's package is ``deploy_master`` (``_utils/deploy_master``).  An installed salt-deploy carries it as
# ``saltext_deploy/master`` and resolves that name once ``saltext_deploy`` is imported (see its docstring), as
# Salt's loader does on a master; the tests import it directly, in this process and in the subprocesses they
# start: put ``_utils`` on their path, as the classic route's ``extmods/utils`` is.
import os
import sys

_UTILS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "_utils")
if _UTILS not in sys.path:
    sys.path.append(_UTILS)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), _UTILS) if p)
