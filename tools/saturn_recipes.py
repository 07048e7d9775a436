"""The Saturn Cloud recipes: a strict model of the format, and the command that writes them.

``saturn.json`` and ``saturn-job.json`` in the repository are templates: where the repository's
URL goes they say ``<your fork's git URL>``, which no recipe validates with. This script writes
the recipes to paste into Saturn, for this checkout's ``origin`` remote or another URL::

    python tools/saturn_recipes.py write --out build/saturn [--repo URL] [--branch main]
    python tools/saturn_recipes.py sync    # templates: embedded environment from environment.yml

(``make saturn-recipes`` runs the first.)

The model is of Saturn Cloud's current recipe format (schema 2023.09.01 and later).

Only the fields Saturn documents for the current format are modelled (see the README's Saturn
section): a recipe is ``{schema_version, type, spec, state?}``, where ``type`` is ``workspace``,
``job`` or ``deployment`` and picks the ``spec`` model. Every model forbids unknown keys, so a
misspelled field fails validation instead of being silently dropped by Saturn.

Field meanings not spelled out by the current docs follow the older flat schema (2022.08.01):

* ``extra_packages.conda.environment_yml`` is the *content* of an ``environment.yml``, not a path;
* a secret attachment's ``name`` is the secret's name in Saturn and ``location`` is where it goes:
  the environment variable's name (``attachment_type: environment_variable``) or a file path;
* ``shared_folders`` items are ``{owner, name, path?}``;
* a ``deployment`` spec is the common fields plus a required ``command``.

"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    field_validator,
    model_validator,
)

ROOT = Path(__file__).resolve().parents[1]
RECIPE_FILES = ("saturn.json", "saturn-job.json")

#: what the templates say where the repository's URL goes
REPO_PLACEHOLDER = "<your fork's git URL>"

#: the oldest schema_version of the current (``type``/``spec``) format
FIRST_CURRENT_SCHEMA = dt.date(2023, 9, 1)


class Strict(BaseModel):
    """Unknown or misspelled keys are errors, everywhere."""

    model_config = ConfigDict(extra="forbid", frozen=True)


Slug = Annotated[str, StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)]
InstanceType = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9.-]*$")]
EnvName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
AbsolutePath = Annotated[str, StringConstraints(pattern=r"^/\S*$")]
NonEmpty = Annotated[str, StringConstraints(min_length=1)]
DiskSpace = Annotated[str, StringConstraints(pattern=r"^[1-9][0-9]*(Gi|Ti)$")]
AutoShutoff = Annotated[
    str, StringConstraints(pattern=r"^(Never|[1-9][0-9]* (minute|hour|day|week)s?)$")
]


#: substrings that only show up in real credentials (Prefect keys, JWTs, chat webhooks, ...)
SECRET_MARKERS = (
    "pnu_",
    "pnb_",
    "eyJ",
    "Bearer",
    "hooks.slack.com",
    "discord.com/api/webhooks",
    "ghp_",
    "github_pat_",
    "xoxb-",
    "AKIA",
    "-----BEGIN",
)
#: environment variable names that hold credentials: attach those as ``secrets`` instead
SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|WEBHOOK|CREDENTIAL", re.IGNORECASE)


class ImageByName(Strict):
    """A Saturn image by name and version, e.g. ``saturncloud/saturn-python`` ``2025.09.01``."""

    name: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][-a-z0-9._/]*$")]
    version: Annotated[str, StringConstraints(pattern=r"^[-a-zA-Z0-9.]+$")]


class ImageByUri(Strict):
    """An image by its registry URI."""

    uri: Annotated[str, StringConstraints(pattern=r"^\S+$")]


class Conda(Strict):
    """``conda``/``mamba`` packages: ``install`` (a package list) or ``environment_yml``."""

    install: NonEmpty | None = None
    environment_yml: NonEmpty | None = None
    use_mamba: bool = True

    @model_validator(mode="after")
    def _one_source(self) -> Conda:
        if (self.install is None) == (self.environment_yml is None):
            raise ValueError("conda needs exactly one of `install` or `environment_yml`")
        return self


class Pip(Strict):
    """pip packages: ``install`` (a package list) or ``requirements_txt`` (its content)."""

    install: NonEmpty | None = None
    requirements_txt: NonEmpty | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Pip:
        if (self.install is None) == (self.requirements_txt is None):
            raise ValueError("pip needs exactly one of `install` or `requirements_txt`")
        return self


class Apt(Strict):
    """apt packages, appended to ``apt-get install``."""

    install: NonEmpty


class ExtraPackages(Strict):
    """Packages installed when the resource starts."""

    conda: Conda | None = None
    pip: Pip | None = None
    apt: Apt | None = None


class SchedulerSpec(Strict):
    """The Dask scheduler's machine."""

    instance_type: InstanceType


class WorkerSpec(Strict):
    """The Dask workers' machines and processes."""

    instance_type: InstanceType
    num_processes: Annotated[int, Field(ge=1)] | None = None
    num_threads: Annotated[int, Field(ge=1)] | None = None
    use_spot_instances: bool = False


class DaskCluster(Strict):
    """The Dask cluster attached to the resource."""

    num_workers: Annotated[int, Field(ge=1)]
    scheduler: SchedulerSpec
    worker: WorkerSpec


class GitRepository(Strict):
    """A repository cloned into the resource."""

    url: str
    path: AbsolutePath | None = None
    on_restart: Literal["preserve changes", "reclone"] = "preserve changes"
    reference: NonEmpty | None = None
    reference_type: Literal["branch", "tag", "commit"] = "branch"

    @field_validator("url")
    @classmethod
    def _reachable_url(cls, url: str) -> str:
        """Saturn clones over https or ssh; the template's placeholder is not a URL."""
        if REPO_PLACEHOLDER in url:
            raise ValueError(
                f"the repository URL is still {REPO_PLACEHOLDER!r}: write the recipes with "
                "`make saturn-recipes` (or `python tools/saturn_recipes.py write --repo URL`)"
            )
        if not re.fullmatch(r"(https://|git@|ssh://)\S+", url):
            raise ValueError(f"{url!r} is not an https or ssh git URL Saturn can clone")
        return url


class SecretAttachment(Strict):
    """A Saturn secret attached by reference: the value lives in Saturn, never in the recipe."""

    location: NonEmpty
    attachment_type: Literal["environment_variable", "file"]
    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][-A-Za-z0-9_.]*$")]
    description: str | None = None

    @model_validator(mode="after")
    def _location_fits_type(self) -> SecretAttachment:
        if self.attachment_type == "environment_variable":
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.location):
                raise ValueError(f"{self.location!r} is not an environment variable name")
        elif not self.location.startswith("/"):
            raise ValueError(f"file secret location {self.location!r} is not an absolute path")
        return self


class SharedFolder(Strict):
    """A shared folder mounted into the resource."""

    owner: NonEmpty
    name: NonEmpty
    path: AbsolutePath | None = None


class CommonSpec(Strict):
    """Fields every resource type has."""

    name: Slug
    image: ImageByName | ImageByUri
    instance_type: InstanceType
    description: str | None = None
    tags: list[NonEmpty] | None = None
    environment_variables: dict[EnvName, str] | None = None
    working_directory: AbsolutePath | None = None
    extra_packages: ExtraPackages | None = None
    start_script: str | None = None
    dask_cluster: DaskCluster | None = None
    git_repositories: list[GitRepository] | None = None
    secrets: list[SecretAttachment] | None = None
    shared_folders: list[SharedFolder] | None = None
    disk_space: DiskSpace | None = None
    use_spot_instance: bool | None = None

    @field_validator("environment_variables")
    @classmethod
    def _no_inline_secrets(cls, env: dict[str, str] | None) -> dict[str, str] | None:
        """Credentials belong in Saturn secrets (``secrets``), not in plain variables."""
        for name, value in (env or {}).items():
            if SECRET_NAME.search(name):
                raise ValueError(f"{name} looks like a secret: attach it under `secrets`")
            if any(marker in value for marker in SECRET_MARKERS):
                raise ValueError(f"the value of {name} looks like a credential")
        return env


class WorkspaceSpec(CommonSpec):
    """An interactive workspace (JupyterLab, RStudio)."""

    auto_shutoff: AutoShutoff = "1 hour"
    ide: Literal["jupyter", "rstudio"] = "jupyter"
    start_ssh: bool | None = None
    self_destruct: bool | None = None


def _cron_field(text: str, low: int, high: int, names: tuple[str, ...]) -> bool:
    """Whether one cron field (``*``, ``1-5``, ``*/15``, ``MON,WED``...) is valid."""
    for part in text.split(","):
        base, _, step = part.partition("/")
        if step and not (step.isdigit() and int(step) >= 1):
            return False
        if base == "*":
            continue
        bounds = base.split("-")
        if len(bounds) > 2:
            return False
        values: list[int] = []
        for bound in bounds:
            if bound.upper() in names:
                values.append(names.index(bound.upper()) + low)
            elif bound.isdigit():
                values.append(int(bound))
            else:
                return False
        if not all(low <= v <= high for v in values) or values != sorted(values):
            return False
    return True


_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_DAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
_CRON_FIELDS = ((0, 59, ()), (0, 23, ()), (1, 31, ()), (1, 12, _MONTHS), (0, 7, _DAYS))


def is_cron(expression: str) -> bool:
    """Whether ``expression`` is a 5-field (Kubernetes CronJob) schedule."""
    fields = expression.split()
    return len(fields) == 5 and all(
        _cron_field(text, low, high, names)
        for text, (low, high, names) in zip(fields, _CRON_FIELDS, strict=True)
    )


class JobSpec(CommonSpec):
    """A (scheduled) job: runs ``command`` to completion."""

    command: NonEmpty
    schedule: str | None = None
    concurrency_policy: Literal["Allow", "Forbid", "Replace"] = "Allow"
    retries: Annotated[int, Field(ge=0)] | None = None
    scale: Annotated[int, Field(ge=1)] | None = None

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None and not is_cron(value):
            raise ValueError(f"{value!r} is not a 5-field cron schedule")
        return value


class DeploymentSpec(CommonSpec):
    """A long-running deployment serving ``command``."""

    command: NonEmpty


def _schema_version(value: str) -> str:
    if not re.fullmatch(r"\d{4}\.\d{2}\.\d{2}", value):
        raise ValueError(f"schema_version {value!r} is not a YYYY.MM.DD date")
    date = dt.date(*map(int, value.split(".")))  # raises on impossible dates
    if date < FIRST_CURRENT_SCHEMA:
        raise ValueError(
            f"schema_version {value} is the old flat format; the current one is "
            f"{FIRST_CURRENT_SCHEMA:%Y.%m.%d} or later"
        )
    return value


class _RecipeBase(Strict):
    schema_version: str
    state: dict[str, Any] | None = None

    @field_validator("schema_version")
    @classmethod
    def _current_format(cls, value: str) -> str:
        return _schema_version(value)


class WorkspaceRecipe(_RecipeBase):
    """``type: workspace``."""

    type: Literal["workspace"]
    spec: WorkspaceSpec


class JobRecipe(_RecipeBase):
    """``type: job``."""

    type: Literal["job"]
    spec: JobSpec


class DeploymentRecipe(_RecipeBase):
    """``type: deployment``."""

    type: Literal["deployment"]
    spec: DeploymentSpec


#: a recipe of any type; ``type`` picks the spec model
Recipe = Annotated[WorkspaceRecipe | JobRecipe | DeploymentRecipe, Field(discriminator="type")]
RECIPE: TypeAdapter[WorkspaceRecipe | JobRecipe | DeploymentRecipe] = TypeAdapter(Recipe)


def parse_recipe(data: Any) -> WorkspaceRecipe | JobRecipe | DeploymentRecipe:
    """Validate a recipe (already parsed from JSON); raises ``pydantic.ValidationError``."""
    return RECIPE.validate_python(data)


def load_recipe(path: Path) -> WorkspaceRecipe | JobRecipe | DeploymentRecipe:
    """Read and validate a JSON recipe file."""
    return RECIPE.validate_json(path.read_bytes())


_LOCAL_PIP_LINE = re.compile(r"^\s*- -e \.(\[[a-z0-9,]+\])?\s*$")


def saturn_environment(environment_yml: str) -> str:
    """The repository's ``environment.yml`` as the recipe embeds it.

    Saturn writes ``environment_yml`` to a file outside the clone and installs it from there, so
    the local ``- -e .`` pip line would point at the wrong directory; it is dropped, and the
    recipe's ``start_script`` installs the package from the clone instead.
    """
    lines = environment_yml.splitlines(keepends=True)
    return "".join(line for line in lines if not _LOCAL_PIP_LINE.match(line))


def _dump(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def sync_recipes(root: Path = ROOT) -> list[Path]:
    """Rewrite ``extra_packages.conda.environment_yml`` in the templates from ``environment.yml``."""
    content = saturn_environment((root / "environment.yml").read_text())
    changed = []
    for name in RECIPE_FILES:
        path = root / name
        data = json.loads(path.read_text())
        conda = data["spec"]["extra_packages"]["conda"]
        if conda.get("environment_yml") != content:
            conda["environment_yml"] = content
            path.write_text(_dump(data))
            changed.append(path)
    return changed


def pip_vcs_url(repo: str) -> str:
    """``repo`` as pip's VCS requirement wants it: ``git+https://…``, ``git+ssh://git@host/path``."""
    if scp := re.fullmatch(r"([^@/:\s]+@[^:/\s]+):(?!//)(\S+)", repo):
        repo = f"ssh://{scp[1]}/{scp[2]}"
    return f"git+{repo}"


def render_recipe(template: dict[str, Any], repo: str, branch: str = "main") -> dict[str, Any]:
    """A template with the repository's URL and branch filled in (the template is not changed)."""
    text = json.dumps(template)
    for placeholder, value in [
        (f"git+{REPO_PLACEHOLDER}@main", f"{pip_vcs_url(repo)}@{branch}"),
        (REPO_PLACEHOLDER, repo),
    ]:
        text = text.replace(json.dumps(placeholder)[1:-1], json.dumps(value)[1:-1])
    data = json.loads(text)
    for repository in data["spec"].get("git_repositories") or []:
        repository["reference"] = branch
    return data


def origin_url(root: Path = ROOT) -> str:
    """The URL of ``root``'s ``origin`` remote.

    Raises:
        SystemExit: there is none (say which URL with ``--repo``).
    """
    found = subprocess.run(
        ["git", "-C", str(root), "remote", "get-url", "origin"],
        capture_output=True,
        text=True,
        check=False,
    )
    if found.returncode != 0 or not found.stdout.strip():
        raise SystemExit(
            f"error: {root} has no `origin` remote: say which repository Saturn should clone "
            "with --repo URL (make saturn-recipes REPO=URL)"
        )
    return found.stdout.strip()


def write_recipes(
    out: Path, repo: str | None = None, branch: str = "main", root: Path = ROOT
) -> list[Path]:
    """Write the recipes for ``repo`` (default: ``root``'s origin) into ``out``, validated.

    Raises:
        SystemExit: no origin remote, or a URL Saturn cannot clone (the model's message).
    """
    from pydantic import ValidationError

    repo = repo or origin_url(root)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in RECIPE_FILES:
        data = render_recipe(json.loads((root / name).read_text()), repo, branch)
        try:
            parse_recipe(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}"
                for e in exc.errors()
            )
            raise SystemExit(f"error: {name} for {repo}: {problems}") from None
        (out / name).write_text(_dump(data))
        written.append(out / name)
    return written


def main(argv: list[str] | None = None) -> None:
    """``write`` the recipes for a repository, or ``sync`` the templates' environment."""
    parser = argparse.ArgumentParser(prog="saturn_recipes.py", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    write = commands.add_parser("write", help="write the recipes to paste into Saturn")
    write.add_argument("--out", type=Path, default=ROOT / "build" / "saturn")
    write.add_argument("--repo", help="git URL Saturn clones (default: this checkout's origin)")
    write.add_argument("--branch", default="main", help="branch to check out (default: main)")
    commands.add_parser("sync", help="copy environment.yml into the templates")
    args = parser.parse_args(argv)
    if args.command == "sync":
        for path in sync_recipes():
            print(f"updated {path.relative_to(ROOT)}", file=sys.stderr)
        return
    for path in write_recipes(args.out, args.repo, args.branch):
        print(path)


if __name__ == "__main__":
    main()
