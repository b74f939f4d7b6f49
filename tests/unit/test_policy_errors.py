"""Every malformed policy gives its own message, at the right line and key path."""

import textwrap

import pytest

from agentd.errors import PolicyError
from agentd.policy import load_policy_text

GiB = 2**30
HOST = 16 * GiB

# (id, policy text, line, key path, a fragment the message must contain)
CASES = [
    ("gpu-prior-max", """
        version: 1
        tool_classes:
          normal:
            gpu:
              prior: max
        """, 6, "tool_classes.normal.gpu.prior", "gpu.prior must be a size like '4Gi' or a share of a GPU"),
    ("gpu-prior-on-a-cpu-class", """
        version: 1
        tool_classes:
          normal:
            device: cpu
            gpu: {prior: 4Gi}
        """, 6, "tool_classes.normal.gpu", "gpu.prior has no effect with device: cpu"),
    ("gpu-prior-in-a-rule-of-a-cpu-class", """
        version: 1
        tool_classes:
          normal: {}
          quick: {device: cpu}
        tool_rules:
          - name: q
            match: {program: [ls]}
            class: quick
            gpu: {prior: 1Gi}
        """, 10, "tool_rules[0].gpu.prior", "gpu.prior has no effect: class 'quick' has device: cpu"),
    ("bad-size", """
        version: 1
        agent_classes:
          high:
            memory:
              max: 2Gx
        """, 6, "agent_classes.high.memory.max", "bad size '2Gx': expected bytes or a number with a unit"),
    ("bad-percentage", """
        version: 1
        agent_classes:
          normal: {memory: {max: 150%}}
        """, 4, "agent_classes.normal.memory.max", "percentage '150%' must be in (0, 100]"),
    ("high-above-max", """
        version: 1
        agent_classes:
          normal:
            memory:
              high: 2Gi
              max: 1Gi
        """, 7, "agent_classes.normal.memory.max", "memory.high (2.0 GiB) must not exceed memory.max (1.0 GiB)"),
    ("min-above-low", """
        version: 1
        agent_classes:
          normal:
            memory: {min: 1Gi, low: 512Mi}
        """, 5, "agent_classes.normal.memory.low", "memory.min (1.0 GiB) must not exceed memory.low (512.0 MiB)"),
    ("low-above-max-percent", """
        version: 1
        tool_classes:
          normal:
            memory:
              low: 50%
              max: 25%
        """, 7, "tool_classes.normal.memory.max", "memory.low (8.0 GiB) must not exceed memory.max (4.0 GiB)"),
    ("unknown-default-agent-class", """
        version: 1
        defaults:
          agent_class: hihg
        agent_classes:
          high: {}
        """, 4, "defaults.agent_class", "unknown agent class 'hihg' (did you mean 'high'?); defined: high"),
    ("implicit-default-tool-class", """
        version: 1
        tool_classes:
          batch: {}
        """, 1, "defaults.tool_class",
     "the default tool class is 'normal' but tool_classes has no such class"),
    ("unknown-rule-class", """
        version: 1
        tool_rules:
          - name: tests
            match: {program: [pytest]}
            class: bacth
        """, 6, "tool_rules[0].class", "unknown tool class 'bacth' (did you mean 'batch'?); built in: batch, interactive, normal"),
    ("invalid-regex", """
        version: 1
        tool_rules:
          - name: r
            match:
              argv_regex: "pytest ("
            class: batch
        """, 6, "tool_rules[0].match.argv_regex", "invalid regex 'pytest (': missing ), unterminated subpattern at position 7"),
    ("weight-out-of-range", """
        version: 1
        agent_classes:
          normal:
            cpu: {weight: 20000}
        """, 5, "agent_classes.normal.cpu.weight", "cpu weight 20000 is out of range: expected 1..10000"),
    ("weight-not-integer", """
        version: 1
        tool_classes:
          normal: {cpu: {weight: 1.5}}
        """, 4, "tool_classes.normal.cpu.weight", "cpu weight must be a whole number from 1 to 10000, not 1.5"),
    ("priority-out-of-range", """
        version: 1
        agent_classes:
          normal:
            priority: 5000
        """, 5, "agent_classes.normal.priority", "priority 5000 is out of range: expected 0..1000"),
    ("priority-is-bool", """
        version: 1
        tool_classes:
          normal: {priority: yes}
        """, 4, "tool_classes.normal.priority", "priority must be a whole number from 0 to 1000, not True"),
    ("unknown-ladder-step", """
        version: 1
        pressure:
          steps: [throttle, squash]
        """, 4, "pressure.steps", "unknown ladder step 'squash': expected one of throttle, freeze, kill"),
    ("repeated-ladder-step", """
        version: 1
        pressure:
          steps: [freeze, freeze]
        """, 4, "pressure.steps", "ladder step 'freeze' is listed twice"),
    ("empty-program-list", """
        version: 1
        tool_rules:
          - name: nothing
            match: {program: []}
            class: batch
        """, 5, "tool_rules[0].match.program", "program list is empty"),
    ("program-with-path", """
        version: 1
        detection:
          housekeeping:
            - {program: [/usr/bin/uname]}
        """, 5, "detection.housekeeping[0].program", "programs match the basename of argv[0]: write 'uname'"),
    ("duplicate-class-name", """
        version: 1
        agent_classes:
          high: {priority: 900}
          low: {priority: 10}
          high: {priority: 800}
        """, 6, "agent_classes.high", "duplicate key 'high' (first given at line 4)"),
    ("duplicate-rule-name", """
        version: 1
        tool_rules:
          - {name: t, match: {program: [pytest]}, class: batch}
          - {name: t, match: {program: [tox]}, class: batch}
        """, 5, "tool_rules[1].name", "duplicate rule name 't' (first used by tool_rules[0])"),
    ("version-2", """
        version: 2
        """, 2, "version", "unsupported policy version 2: this agentd reads version 1"),
    ("version-missing", """
        agent_classes: {}
        """, 1, "version", "required key 'version' is missing"),
    ("unknown-key-did-you-mean", """
        version: 1
        agent_classes:
          normal:
            memroy: {max: 1Gi}
        """, 5, "agent_classes.normal.memroy", "unknown key 'memroy' (did you mean 'memory'?)"),
    ("unknown-key-lists-allowed", """
        version: 1
        forecast:
          zzz: 1
        """, 4, "forecast.zzz", "unknown key 'zzz'; allowed here: predictor, headroom, min_high, quantile"),
    ("unknown-top-level-key", """
        version: 1
        tool_rule: []
        """, 3, "tool_rule", "unknown key 'tool_rule' (did you mean 'tool_rules'?)"),
    ("rule-missing-class", """
        version: 1
        tool_rules:
          - name: t
            match: {program: [pytest]}
        """, 4, "tool_rules[0].class", "required key 'class' is missing"),
    ("empty-match", """
        version: 1
        tool_rules:
          - name: t
            match: {}
            class: batch
        """, 5, "tool_rules[0].match", "match has no condition"),
    ("bad-class-name", """
        version: 1
        tool_classes:
          normal: {}
          "../escape": {}
        """, 5, "tool_classes.../escape", "bad class name '../escape'"),
    ("bad-latency", """
        version: 1
        tool_classes:
          normal: {latency: slow}
        """, 4, "tool_classes.normal.latency", "Input should be 'interactive', 'normal' or 'batch'"),
    ("bad-cpu-max", """
        version: 1
        agent_classes:
          normal: {cpu: {max: 2 CPUs}}
        """, 4, "agent_classes.normal.cpu.max", "bad cpu amount '2 CPUs'"),
    ("negative-pids", """
        version: 1
        tool_classes:
          normal: {pids: {max: -1}}
        """, 4, "tool_classes.normal.pids.max", "pids.max must be a positive whole number or 'max', not -1"),
    ("psi-window-too-long", """
        version: 1
        pressure:
          psi_window_us: 60000000
        """, 4, "pressure.psi_window_us", "psi_window_us 60000000 is out of range: expected 500000..10000000"),
    ("psi-threshold-above-window", """
        version: 1
        pressure:
          psi_some_threshold_us: 3000000
          psi_window_us: 2000000
        """, 4, "pressure.psi_some_threshold_us", "psi_some_threshold_us (3000000) must not exceed psi_window_us (2000000)"),
    ("throttle-factor", """
        version: 1
        pressure: {throttle_factor: 1.5}
        """, 3, "pressure.throttle_factor", "throttle_factor 1.5 is out of range: expected a value in (0.0, 1.0)"),
    ("headroom-below-one", """
        version: 1
        forecast: {headroom: 0.8}
        """, 3, "forecast.headroom", "forecast.headroom 0.8 is out of range"),
    ("bad-scheduler", """
        version: 1
        cpu: {scheduler: cfs}
        """, 3, "cpu.scheduler", "Input should be 'auto', 'sched_ext', 'weights' or 'none'"),
    ("relative-socket", """
        version: 1
        daemon: {socket: run/agentd.sock}
        """, 3, "daemon.socket", "expected an absolute path, not 'run/agentd.sock'"),
    ("bad-listen", """
        version: 1
        daemon: {metrics_listen: "localhost"}
        """, 3, "daemon.metrics_listen", "bad listen address 'localhost': expected HOST:PORT"),
    ("name-inside-class", """
        version: 1
        agent_classes:
          normal: {name: other}
        """, 4, "agent_classes.normal.name", "a class is named by its key"),
    ("gpu-budget", """
        version: 1
        agent_classes:
          normal:
            gpu: {memory_budget: lots}
        """, 5, "agent_classes.normal.gpu.memory_budget", "bad size 'lots'"),
    ("stop-timeout", """
        version: 1
        detection: {stop_timeout_s: 0.1}
        """, 3, "detection.stop_timeout_s", "0.1 is out of range: expected a value in [0.25, 60]"),
    ("empty-any-of", """
        version: 1
        tool_rules:
          - {name: t, match: {any_of: []}, class: batch}
        """, 4, "tool_rules[0].match.any_of", "any_of is empty"),
]


def _load(text):
    # Case texts start with a newline, so line 1 is blank and `version: 1` is line 2.
    return load_policy_text(textwrap.dedent(text), "p.yaml", host_memory_bytes=HOST)


@pytest.mark.parametrize("text,line,path,fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_policy_message(text, line, path, fragment):
    with pytest.raises(PolicyError) as info:
        _load(text)
    prefix = f"p.yaml:{line}: {path}: "
    hits = [str(p) for p in info.value.problems if str(p).startswith(prefix)]
    assert hits, f"no problem at {prefix!r}; got:\n{info.value}"
    assert any(fragment in h for h in hits), f"{fragment!r} not in {hits}"
    # str(PolicyError) lists every problem, one per line
    assert str(info.value).splitlines() == [str(p) for p in info.value.problems]


def test_case_table_is_large_and_unique():
    assert len(CASES) >= 20
    assert len({c[0] for c in CASES}) == len(CASES)


def test_every_problem_is_collected_in_one_pass():
    text = """
        version: 1
        defaults: {agent_class: nope}
        agent_classes:
          normal:
            priority: -1
            memory: {max: 12 apples}
        tool_rules:
          - {name: a, match: {argv_regex: "("}, class: nope}
        pressure: {steps: [explode]}
        """
    with pytest.raises(PolicyError) as info:
        _load(text)
    got = [(p.line, p.path) for p in info.value.problems]
    assert got == [
        (3, "defaults.agent_class"),
        (6, "agent_classes.normal.priority"),
        (7, "agent_classes.normal.memory.max"),
        (9, "tool_rules[0].match.argv_regex"),
        (9, "tool_rules[0].class"),
        (10, "pressure.steps"),
    ]


def test_yaml_syntax_error_has_line():
    with pytest.raises(PolicyError) as info:
        _load("version: 1\nagent_classes:\n  normal: {priority: 5\n  low: {}\n")
    (problem,) = info.value.problems
    assert problem.line == 4 and "YAML syntax error" in problem.message
    assert str(problem).startswith("p.yaml:4: YAML syntax error")


@pytest.mark.parametrize("text,fragment", [
    ("", "policy is empty"),
    ("# only a comment\n", "policy is empty"),
    ("- version: 1\n", "a policy is a mapping"),
    ("version: 1\n---\nversion: 1\n", "p.yaml:2: YAML syntax error: expected a single document"),
])
def test_not_a_policy_document(text, fragment):
    with pytest.raises(PolicyError) as info:
        _load(text)
    assert fragment in str(info.value)


def test_percentage_resolved_against_given_host_memory():
    for host in (HOST, 3 * HOST):
        p = load_policy_text("version: 1\nagent_classes: {normal: {memory: {max: 25%}}}\n", "p.yaml",
                             host_memory_bytes=host)
        assert p.agent_classes["normal"].memory.max == host // 4
        assert p.pressure.budget == int(host * 0.9)      # the default budget is 90% of the host
        assert p.host_memory_bytes == host


@pytest.mark.parametrize("text,line,path,fragment", [
    ("version: 1\ntool_rules: [{name: a, match: {declared_class: []}, class: batch}]\n", 2,
     "tool_rules[0].match.declared_class", "declared_class list is empty: name at least one, e.g. [batch]"),
    ("version: 1\ndetection:\n  agent_programs: [/usr/bin/claude]\n", 3,
     "detection.agent_programs", "bad name '/usr/bin/claude' in the program list (programs match the basename"),
    ("version: 1\ndetection:\n  enabled: true\n  tool_parents: [{argv_regex: '(bash'}]\n", 4,
     "detection.tool_parents[0].argv_regex", "invalid regex '(bash': missing )"),
    ("version: 1\nagent_classes:\n  normal: {memory: {max: }}\n", 3,
     "agent_classes.normal.memory.max", "a size is required here"),
])
def test_more_list_and_size_messages(text, line, path, fragment):
    with pytest.raises(PolicyError) as info:
        load_policy_text(text, "p.yaml", host_memory_bytes=HOST)
    assert any(str(p).startswith(f"p.yaml:{line}: {path}: ") and fragment in str(p)
               for p in info.value.problems), str(info.value)


def test_tool_parents_take_matches_and_default_to_none():
    # Installed copies of the earlier default policy carry `tool_parents: []`.
    p = load_policy_text("version: 1\ndetection: {tool_parents: []}\n", "p.yaml", host_memory_bytes=HOST)
    assert p.detection.tool_parents == []
    p = load_policy_text("version: 1\ndetection: {tool_parents: [{argv_regex: '^bash$'}]}\n", "p.yaml",
                         host_memory_bytes=HOST)
    assert p.detection.tool_parents[0].argv_regex == "^bash$"


def test_bare_off_disables_metrics():
    # YAML 1.1 reads a bare `off` as false
    p = load_policy_text("version: 1\ndaemon: {metrics_listen: off}\n", "p.yaml", host_memory_bytes=HOST)
    assert p.daemon.metrics_listen == ""
