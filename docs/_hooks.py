"""MkDocs hooks: the API reference pages, generated from the code at build time.

One page per public module (every module of the package whose name does not
start with ``_``, found by walking it, so a new public module gets its page
without anyone editing a list), one per record module, and a table of every
operation of the catalogue with its Python name, path, rate group and record.
Nothing generated is committed, so it cannot drift from the code.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

PACKAGE = "apientreprise_async"


def _public_modules() -> list[str]:
    """Public modules of the package, records apart, in a stable order."""
    package = importlib.import_module(PACKAGE)
    names = [PACKAGE]
    for info in pkgutil.walk_packages(package.__path__, PACKAGE + "."):
        parts = info.name.split(".")
        if any(part.startswith("_") for part in parts) or parts[1] == "records":
            continue
        try:
            importlib.import_module(info.name)
        except ImportError:  # an extra that is not installed: no page rather than a broken one
            continue
        names.append(info.name)
    return names


def _record_modules() -> list[str]:
    records = importlib.import_module(f"{PACKAGE}.records")
    return [
        f"{PACKAGE}.records.{info.name}"
        for info in pkgutil.iter_modules(records.__path__)
        if not info.name.startswith("_")
    ]


def _module_page(name: str) -> str:
    return f"# `{name}`\n\n::: {name}\n    options:\n      show_root_heading: false\n"


def _records_page(name: str) -> str:
    short = name.rsplit(".", 1)[1]
    return (
        f"# Records: `{short}`\n\n"
        f"Typed records of the `{short}` provider: what `response.data` holds.\n\n"
        f"::: {name}\n    options:\n      show_root_heading: false\n      heading_level: 2\n"
    )


def _operations_page() -> str:
    from apientreprise_async._catalogue import all_endpoints
    from apientreprise_async._cli import _python_names

    by_id = {op: name for name, op in _python_names().items()}
    endpoints = all_endpoints()
    # An older version of an operation is the same method with version=N: same path but
    # for its /vN/ prefix.
    by_route = {
        e.path.split("/", 2)[-1]: by_id[e.operation_id]
        for e in endpoints
        if e.operation_id in by_id
    }
    lines = [
        "# Operations",
        "",
        "Every operation of the catalogue, by provider: call it as",
        "`client.<provider>.<method>(...)`, as `client.call(operation_id, **params)`, or from",
        "the command line (`apientreprise call <id or Python name>`). Deprecated operations",
        "still work and warn once.",
    ]
    provider = None
    for endpoint in sorted(endpoints, key=lambda e: (e.provider, e.path.split("/", 2)[-1])):
        if endpoint.provider != provider:
            provider = endpoint.provider
            lines += ["", f"## {provider}", ""]
        name = by_id.get(endpoint.operation_id)
        if name is None:
            base = by_route.get(endpoint.path.split("/", 2)[-1])
            python = f"client.{base}(..., version={endpoint.version})" if base else None
        else:
            python = f"client.{name}"
        record = endpoint.record
        if record is None:
            shown = "JSON"
        else:
            inner = getattr(record, "__args__", (record,))[0]
            module = inner.__module__.rsplit(".", 1)[1]
            shown = f"`{module}.{inner.__name__}`" + (" (a list)" if inner is not record else "")
        title = f"`{python}`" if python else f"`{endpoint.operation_id}`"
        deprecated = " *(deprecated)*" if endpoint.deprecated else ""
        lines += [
            f"- **{title}**{deprecated}  ",
            f"  `GET {endpoint.path}` · id `{endpoint.operation_id}` · rate bucket "
            f"`{endpoint.bucket}` · record {shown}",
        ]
    lines += [
        "",
        "## Resource groups",
        "",
        "Each attribute of the client (`client.insee`, `client.dgfip`...) is a group of",
        "typed methods; their traceability and call options are the same everywhere.",
        "",
    ]
    from apientreprise_async import _gen_resources

    for attribute, annotation in _gen_resources.Resources.__annotations__.items():
        lines.append(
            f"::: {PACKAGE}._gen_resources.{annotation}\n"
            f"    options:\n      show_root_heading: true\n      heading_level: 3\n"
            f"      show_root_full_path: false\n"
        )
        lines.append(f"(as `client.{attribute}`)\n")
    return "\n".join(lines) + "\n"


def _pages() -> dict[str, str]:
    pages = {"reference/operations.md": _operations_page()}
    for name in _public_modules():
        pages[f"reference/{name}.md"] = _module_page(name)
    pages["reference/records/index.md"] = (
        "# Records\n\n"
        "Every answer's `data` is a frozen attrs record of the operation's provider module "
        "(or a tuple of them); the [operations table](../operations.md) names each one. "
        "They share this base:\n\n"
        f"::: {PACKAGE}.records.Record\n    options:\n      heading_level: 2\n"
    )
    for name in _record_modules():
        pages[f"reference/records/{name.rsplit('.', 1)[1]}.md"] = _records_page(name)
    return pages


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    """Append the Reference section to the navigation."""
    pages = _pages()
    modules = [
        {f"{path[len('reference/') : -3]}": path}
        for path in pages
        if path.count("/") == 1 and path != "reference/operations.md"
    ]
    records: list[Any] = ["reference/records/index.md"]
    records += [
        {path.rsplit("/", 1)[1][:-3]: path}
        for path in pages
        if "/records/" in path and not path.endswith("/index.md")
    ]
    nav: list[Any] = config.nav or []
    nav.append(
        {
            "Reference": [
                {"Operations": "reference/operations.md"},
                *modules,
                {"Records": records},
            ]
        }
    )
    config.nav = nav
    return config


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Add the generated reference pages to the site."""
    for path, content in _pages().items():
        files.append(File.generated(config, path, content=content))
    return files


# Docstrings use Sphinx roles (:class:`~x.Y`), which Markdown renders as ":class:" before the
# code span; show the code span alone, shortened as "~" asks.
_ROLE = re.compile(r":(?:class|meth|func|data|attr|exc|mod|obj):<code>(~?)([^<]+)</code>")


def _shorten(match: re.Match[str]) -> str:
    tilde, target = match.groups()
    return f"<code>{target.rsplit('.', 1)[-1] if tilde else target}</code>"


def on_page_content(html: str, page: Page, **_: Any) -> str:
    """Drop the Sphinx role prefixes from rendered docstrings."""
    return _ROLE.sub(_shorten, html)
