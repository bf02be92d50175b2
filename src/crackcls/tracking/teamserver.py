"""``make server``: a team's MLflow tracking server, with logins and artifacts proxied through it.

Clients then need only ``MLFLOW_TRACKING_URI=http://host:port`` and their own
``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``: runs, the registry and
every artifact (``mlflow-artifacts:/``) go over HTTP, so nobody needs access to the
database or the artifact store itself. The logins are MLflow's ``basic-auth`` app,
whose users and permissions live in their own database (``--auth-db``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from crackcls.util import atomic, paths
from crackcls.util.errors import CrackclsError, user_errors_exit

AUTH_CONFIG_FILE = Path(".mlflow-server") / "basic_auth.ini"
SECRET_KEY_VAR = "MLFLOW_FLASK_SERVER_SECRET_KEY"
ADMIN_PASSWORD_VAR = "MLFLOW_AUTH_ADMIN_PASSWORD"
PERMISSIONS = ("READ", "USE", "EDIT", "MANAGE", "NO_PERMISSIONS")
# MLflow's server jobs run GenAI evaluations and trace roll-ups, which crackcls never asks for;
# off unless the environment turns them on, they cost no consumer processes (four, each
# holding MLflow in memory).
JOB_EXECUTION_VAR = "MLFLOW_SERVER_ENABLE_JOB_EXECUTION"


def auth_config(auth_db: str, default_permission: str = "READ", admin: str = "admin") -> str:
    """The basic-auth app's ini. The admin password never goes in it: it comes from the environment."""
    return (
        "[mlflow]\n"
        f"default_permission = {default_permission}\n"
        f"database_uri = {auth_db}\n"
        f"admin_username = {admin}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )


def artifacts_destination(value: str) -> str:
    """A URI (``s3://``, ``gs://``, ``file://``…) as given; a plain folder made absolute."""
    if "://" in value:
        return value
    return str(paths.resolve(value).resolve())


def command(backend: str, artifacts: str, host: str, port: int, workers: int) -> list[str]:
    mlflow = shutil.which("mlflow") or "mlflow"
    return [
        mlflow, "server", "--app-name", "basic-auth",
        "--backend-store-uri", backend,
        "--artifacts-destination", artifacts_destination(artifacts),
        "--host", host, "--port", str(port), "--workers", str(workers),
    ]  # fmt: skip


def _check_environment(environ: dict[str, str]) -> None:
    if not environ.get(SECRET_KEY_VAR):
        raise CrackclsError(
            f"set {SECRET_KEY_VAR} to a long random string (the same on every server process), "
            f'e.g. export {SECRET_KEY_VAR}="$(python -c \'import secrets; print(secrets.token_hex(32))\')"'
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m crackcls.tracking.teamserver", description=__doc__)
    parser.add_argument("--backend", required=True, help="runs and registry: postgresql://user:pw@host/db, sqlite:///path…")
    parser.add_argument("--artifacts", required=True, help="where artifacts are stored: a folder, s3://bucket/path, gs://…")
    parser.add_argument("--auth-db", required=True, help="users and permissions: a SQLAlchemy URI")
    parser.add_argument("--default-permission", choices=PERMISSIONS, default="READ", help="what every user may do on others' runs and models")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=4)
    return parser


@user_errors_exit
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    _check_environment(dict(os.environ))
    config_file = paths.project_root() / AUTH_CONFIG_FILE
    atomic.write_text(config_file, auth_config(args.auth_db, args.default_permission))
    os.environ["MLFLOW_AUTH_CONFIG_PATH"] = str(config_file)
    os.environ.setdefault(JOB_EXECUTION_VAR, "false")
    argv_server = command(args.backend, args.artifacts, args.host, args.port, args.workers)
    print(" ".join(argv_server), file=sys.stderr, flush=True)
    # exec: the server replaces this process, so stopping `make server` stops MLflow.
    os.execv(argv_server[0], argv_server)


if __name__ == "__main__":
    main()
