"""kernel_has_qdisc reads what the kernel offers without creating a qdisc (agentd doctor)."""

from agentd.kernel.qdisc import kernel_has_qdisc


def test_a_loaded_module_a_builtin_or_an_installed_module_counts(tmp_path):
    sysr, mods = tmp_path / "sys", tmp_path / "modules"
    (mods / "7.0").mkdir(parents=True)
    (sysr / "module").mkdir(parents=True)
    args = dict(release="7.0", sys_root=str(sysr), modules_root=str(mods))
    assert not kernel_has_qdisc("fq", **args)
    (mods / "7.0" / "modules.dep").write_text(
        "kernel/net/sched/sch_fq_codel.ko.xz:\nkernel/net/sched/sch_fq.ko.xz:\n")
    assert kernel_has_qdisc("fq", **args) and kernel_has_qdisc("fq_codel", **args)
    assert not kernel_has_qdisc("htb", **args)
    (mods / "7.0" / "modules.builtin").write_text("kernel/net/sched/sch_htb.ko\n")
    assert kernel_has_qdisc("htb", **args)
    (sysr / "module" / "sch_cake").mkdir()
    assert kernel_has_qdisc("cake", **args)
