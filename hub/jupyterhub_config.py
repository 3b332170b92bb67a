"""JupyterHub configuration of the course's hub (``make hub``; set up by ``python -m grading.hub setup``).

Reads the hub that ``setup`` wrote (``$DLCV_HUB_ROOT/state/hub.json``: roster, exchange, gradebook, password,
operator token). Everything listens on 127.0.0.1 only: the proxy (public side and API), the hub and every
single-user server. Each user's server is a process of their own unix account (LocalProcessSpawner) running
this checkout's ``.venv``; students get the student settings (``jupyter/student/``: no formgrader, no
create-assignment, no course list) and the exchange config, instructors nbgrader's full UI on their course.

**Authentication.** TRY-OUT ONLY: JupyterHub's DummyAuthenticator with one shared password (printed by
``make hub``, stored in ``state/hub.json``), restricted to the roster. For a real class replace the block
marked ``AUTHENTICATOR`` below (docs/hub.md, "Logging in for real"), e.g. with

* LTI 1.3 from the LMS (``pip install jupyterhub-ltiauthenticator``)::

      c.JupyterHub.authenticator_class = "ltiauthenticator.lti13.auth.LTI13Authenticator"
      c.LTI13Authenticator.issuer = "https://canvas.instructure.com"
      c.LTI13Authenticator.client_id = ["<client id>"]
      c.LTI13Authenticator.authorize_url = "https://<lms>/api/lti/authorize_redirect"
      c.LTI13Authenticator.jwks_endpoint = "https://<lms>/api/lti/security/jwks"
      c.LTI13Authenticator.username_key = "email"

* OAuth / OpenID Connect (``pip install oauthenticator``)::

      c.JupyterHub.authenticator_class = "generic-oauth"   # or "github", "google", "azuread", ...
      c.GenericOAuthenticator.client_id = "<id>"; c.GenericOAuthenticator.client_secret = "<secret>"
      c.GenericOAuthenticator.oauth_callback_url = "https://<hub>/hub/oauth_callback"
      c.GenericOAuthenticator.authorize_url = ...; token_url = ...; userdata_url = ...

  Either way the user names must map to the unix accounts ``setup`` created (``Authenticator.username_map``
  or a ``normalize_username`` override), and ``allowed_users`` stays the roster.
"""

import json
import os
import sys
from pathlib import Path

c = get_config()  # noqa: F821 - provided by JupyterHub

REPO = Path(__file__).resolve().parents[1]
ROOT = Path(os.environ.get("DLCV_HUB_ROOT", "/srv/dlcv-hub"))
HUB = json.loads((ROOT / "state" / "hub.json").read_text())
# the interpreter of every user's server: the .venv's, or its stand-in (grading.hub.users_python)
PYTHON = Path(HUB.get("python") or sys.executable)
INSTRUCTORS = set(HUB["instructors"])
STUDENTS = set(HUB["students"])

# --- network: localhost only
c.JupyterHub.bind_url = f"http://127.0.0.1:{int(os.environ.get('DLCV_HUB_PORT', HUB['port']))}"
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = int(os.environ.get("DLCV_HUB_INTERNAL_PORT", "0")) or 8081
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{int(os.environ.get('DLCV_HUB_PROXY_API_PORT', '8001'))}"
c.ConfigurableHTTPProxy.command = [str(REPO / "hub" / "node_modules" / ".bin" / "configurable-http-proxy")]
c.ConfigurableHTTPProxy.should_start = True
c.Spawner.ip = "127.0.0.1"

# --- the hub's own state: root's alone (state/ is 0700)
STATE = ROOT / "state"
c.JupyterHub.db_url = f"sqlite:///{STATE / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(STATE / "jupyterhub_cookie_secret")
c.JupyterHub.pid_file = str(STATE / "jupyterhub.pid")
c.ConfigurableHTTPProxy.pid_file = str(STATE / "proxy.pid")

# --- AUTHENTICATOR (try-out): one shared password for the roster. Replace for a real class (see above).
c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = HUB["password"]
c.Authenticator.allowed_users = INSTRUCTORS | STUDENTS
c.Authenticator.admin_users = set()  # instructors need no power over students' servers
# --- end AUTHENTICATOR

# The operator (the test, or scripts of the course's staff) drives the hub through its REST API.
c.JupyterHub.services = [{"name": "course-operator", "api_token": HUB["operator_token"]}]
c.JupyterHub.load_roles = [
    {
        "name": "course-operator",
        "scopes": ["admin:users", "admin:servers", "tokens", "list:users", "read:users"],
        "services": ["course-operator"],
    },
    {"name": "instructors", "scopes": ["self"], "groups": ["instructors"]},
]
c.JupyterHub.load_groups = {"instructors": {"users": sorted(INSTRUCTORS)}, "students": {"users": sorted(STUDENTS)}}

# --- single-user servers: real unix accounts, this checkout's .venv, per-role Jupyter settings
c.JupyterHub.spawner_class = "localprocess"
c.Spawner.cmd = [str(PYTHON), "-m", "jupyterhub.singleuser"]
c.Spawner.default_url = "/lab"
c.Spawner.start_timeout = 180
c.Spawner.http_timeout = 180
c.JupyterHub.concurrent_spawn_limit = 200
c.JupyterHub.init_spawners_timeout = 1


def _per_role(spawner) -> None:
    """Settings by role: students see only the Assignments panel of nbgrader; instructors the formgrader."""
    name = spawner.user.name
    env = {
        "PATH": f"{PYTHON.parent}{os.pathsep}/usr/local/bin:/usr/bin:/bin",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        "PYTHONDONTWRITEBYTECODE": "1",
        "MPLBACKEND": "Agg",
    }
    if name in INSTRUCTORS:
        env["DLCV_ROLE"] = "instructor"
    elif name in STUDENTS:
        env["DLCV_ROLE"] = "student"
        env["JUPYTER_CONFIG_PATH"] = os.pathsep.join(
            [str(REPO / "jupyter" / "student"), str(ROOT / "config" / "student")]
        )
    else:
        raise RuntimeError(f"{name} is not on the course's roster")
    spawner.environment.update(env)


c.Spawner.pre_spawn_hook = _per_role
