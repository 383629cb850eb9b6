"""The curated public API: `__all__` lists exactly the public names, once each."""

from __future__ import annotations

import types

import streaming_mw
import streaming_mw.errors as errors_module


def public_names() -> set[str]:
    return {
        name
        for name, value in vars(streaming_mw).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and name != "annotations"
    }


def test_all_matches_the_public_names() -> None:
    assert set(streaming_mw.__all__) == public_names()


def test_all_has_no_duplicates() -> None:
    assert len(streaming_mw.__all__) == len(set(streaming_mw.__all__))


def test_every_exported_error_derives_from_the_root() -> None:
    for name in errors_module.__all__:
        error = getattr(errors_module, name)
        assert issubclass(error, streaming_mw.StreamingError)
        assert name in streaming_mw.__all__
        assert name in (errors_module.__doc__ or ""), f"{name} missing from the drawn tree"


def test_package_is_typed() -> None:
    from importlib.resources import files

    assert files("streaming_mw").joinpath("py.typed").is_file()
