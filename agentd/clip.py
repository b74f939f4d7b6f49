"""What of a tool call's argv is recorded (events, state, history, status).

An argv is the agent's input and can be hundreds of KB; written as is to the event log,
the state journal and the history on every call, a loop of such calls fills a disk within
seconds. The record keeps the head analysis reads (agentd/shellwords.py: the same bound,
so a clipped argv gives the same forecast signature as the whole one) and says what was
cut: a cut argument ends in a marker with its original length, dropped arguments are
counted in one last item.
"""

from .shellwords import ANALYSE_MAX_ARGS, ANALYSE_MAX_CHARS, bounded_argv


def clip_argv(argv):
    argv = list(argv)
    head = list(bounded_argv(argv))
    if head == argv:
        return argv
    last = len(head) - 1
    if last >= 0 and len(head[last]) < len(argv[last]):
        head[last] += f"...[cut: {len(argv[last])} chars]"
    dropped = len(argv) - len(head)
    if dropped > 0:
        total = sum(len(a) for a in argv[len(head):])
        head.append(f"...[{dropped} more args, {total} chars]")
    return head


__all__ = ["clip_argv", "ANALYSE_MAX_ARGS", "ANALYSE_MAX_CHARS"]
