"""YAML text -> plain Python data plus the line of every key, for error messages.

PyYAML's constructors forget where a value came from, and silently keep the last of two
equal keys. A policy error must name its file and line, and a duplicated class name is a
mistake the author wants to hear about, so this module composes the node tree itself and
builds the data while recording, for each key path, the line of the key and of its value.
"""

from dataclasses import dataclass, field

import yaml

_MERGE_TAG = "tag:yaml.org,2002:merge"


@dataclass
class Located:
    """The data of one YAML document and where each part of it was written."""

    data: object
    # key path (tuple of str / int) -> 1-based line of the key (list items: of the item)
    key_lines: dict = field(default_factory=dict)
    # key path -> 1-based line where the value starts
    value_lines: dict = field(default_factory=dict)
    problems: list = field(default_factory=list)   # (line, path, message)

    def line_of(self, path, prefer_value=False):
        """Line of the longest prefix of `path` that exists in the document (1 if none)."""
        path = tuple(path)
        while path:
            table = self.value_lines if prefer_value else self.key_lines
            if path in table:
                return table[path]
            path = path[:-1]
        return 1


class YamlSyntaxError(Exception):
    def __init__(self, line, message):
        self.line = line
        super().__init__(message)


def load_located(text):
    """Parse one YAML document; raises YamlSyntaxError with a 1-based line on bad syntax."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        located = Located(None)
        if node is None:
            return located
        # Building constructs scalars too: an unknown tag (`!x`) fails here, not in compose.
        located.data = _Builder(located).build(node, ())
        return located
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark else 1
        what = err.problem or str(err)
        if err.context:
            what = f"{err.context}: {what}"
        raise YamlSyntaxError(line, f"YAML syntax error: {what}") from None
    except yaml.YAMLError as err:   # e.g. several documents in one file
        raise YamlSyntaxError(1, f"YAML error: {err}") from None


class _Builder:
    def __init__(self, located):
        self.located = located
        self.constructor = yaml.constructor.SafeConstructor()

    def build(self, node, path):
        self.located.value_lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            out = []
            for i, item in enumerate(node.value):
                self.located.key_lines[path + (i,)] = item.start_mark.line + 1
                out.append(self.build(item, path + (i,)))
            return out
        return self.constructor.construct_object(node, deep=True)

    def _mapping(self, node, path):
        out = {}
        first_line = {}
        merged = []
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if key_node.tag == _MERGE_TAG:
                # `<<: *shared` copies keys from an anchored mapping; explicit keys win.
                sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                for src in sources:
                    if isinstance(src, yaml.MappingNode):
                        merged.append((src, line))
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self.located.problems.append((line, path, "a key must be a plain name, not a list or mapping"))
                continue
            key = self.constructor.construct_object(key_node)
            if not isinstance(key, str):
                key = str(key) if key is not None else "null"
            if key in out:
                self.located.problems.append(
                    (line, path + (key,), f"duplicate key '{key}' (first given at line {first_line[key]})"))
                continue
            first_line[key] = line
            self.located.key_lines[path + (key,)] = line
            out[key] = self.build(value_node, path + (key,))
        for src, line in merged:
            # Build the anchored mapping apart so its lines do not overwrite explicit keys'.
            scratch = Located(None)
            values = _Builder(scratch).build(src, path)
            for k, v in values.items():
                if k not in out:
                    out[k] = v
                    for table, src_table in ((self.located.key_lines, scratch.key_lines),
                                             (self.located.value_lines, scratch.value_lines)):
                        for p, ln in src_table.items():
                            if p[:len(path) + 1] == path + (k,):
                                table.setdefault(p, ln)
            self.located.problems.extend(scratch.problems)
        return out
