"""The built-in stores are an example application like any other: no module of the core reaches them
(directly or through another module), and they use only the public API. Read from the import graph
(grimp), TYPE_CHECKING imports excluded; pyproject's import-linter contracts say the same as layers."""

from __future__ import annotations

import pytest

grimp = pytest.importorskip("grimp")

APP = "dualwrite.demo.app"
# The applications on top of the core: they may run the example application.
ABOVE_THE_CORE = ("dualwrite.cli", "dualwrite.bench", "dualwrite.demo")
# What an application may import from dualwrite: the root (its public API), the portable column types,
# the errors and the event codec.
PUBLIC = {"dualwrite", "dualwrite.types", "dualwrite.errors", "dualwrite.events"}


def _graph():  # type: ignore[no-untyped-def]
    return grimp.build_graph("dualwrite", exclude_type_checking_imports=True)


def _under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_no_module_of_the_core_imports_the_example_application() -> None:
    graph = _graph()
    core = sorted(m for m in graph.modules if not any(_under(m, p) for p in ABOVE_THE_CORE))
    assert len(core) > 40, core  # the walk found the package
    app = [m for m in graph.modules if _under(m, APP)]
    reaching = {(m, a) for m in core for a in app if graph.chain_exists(importer=m, imported=a)}
    assert reaching == set(), {pair: graph.find_shortest_chain(*pair) for pair in sorted(reaching)[:5]}


def test_the_example_application_imports_only_the_public_api() -> None:
    graph = _graph()
    app_modules = [m for m in graph.modules if _under(m, APP)]
    assert len(app_modules) >= 10, app_modules
    used = {
        imported
        for m in app_modules
        for imported in graph.find_modules_directly_imported_by(m)
        if _under(imported, "dualwrite") and not _under(imported, APP)
    }
    assert used <= PUBLIC, sorted(used - PUBLIC)
