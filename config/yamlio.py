"""YAML reading as strict as LiveKit's yaml.v3 decoding: duplicate keys are errors, not "last
one wins", and a document must be a mapping."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import yaml

from config.build import shown


class YamlError(ValueError):
    """Unparseable YAML; ``line`` is 1-based, 0 when unknown."""

    def __init__(self, problem: str, line: int = 0) -> None:
        super().__init__(problem)
        self.problem = problem
        self.line = line


class _TypedLoader(yaml.SafeLoader):
    """YAML 1.1 scalars resolved to bool, int, float, str and null."""


class _LiteralLoader(yaml.BaseLoader):
    """Every scalar as the string written: for secrets, where "0123" must stay "0123"."""


def _mapping_without_duplicates(
    loader: yaml.SafeLoader | yaml.BaseLoader, node: yaml.MappingNode
) -> dict[Any, Any]:
    if isinstance(loader, yaml.SafeLoader):
        loader.flatten_mapping(node)  # resolve "<<" merges before looking for duplicates
    seen: set[Hashable] = set()
    for key_node, _value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, Hashable):
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f'duplicate key "{key}"', key_node.start_mark
                )
            seen.add(key)
    return loader.construct_mapping(node, deep=True)


for _loader in (_TypedLoader, _LiteralLoader):
    _loader.add_constructor(
        yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates
    )


def parse_mapping(text: str, *, literal: bool = False) -> dict[str, Any]:
    """Parse one YAML document that must be a mapping (or empty).

    :param literal: keep every scalar a string, as written.
    :raises YamlError: on a syntax error or a document that is not a mapping.
    """
    loader = _LiteralLoader if literal else _TypedLoader
    try:
        data = yaml.load(text, Loader=loader)  # both loaders build plain data only
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = " ".join(str(exc.problem or exc.context or "invalid YAML").split())
        raise YamlError(problem, mark.line + 1 if mark is not None else 0) from None
    except yaml.YAMLError as exc:
        raise YamlError(" ".join(str(exc).split())) from None
    if data is None or data == "":
        return {}
    if not isinstance(data, dict):
        raise YamlError(f"expected a mapping of keys, got {shown(data)}")
    return data
