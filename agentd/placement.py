"""Where the daemon and its agents live in the cgroup v2 tree, decided once at start.

systemd starts every main process of a unit in the unit's own cgroup. cgroup v2 lets no
process join a cgroup whose `cgroup.subtree_control` enables controllers (the "no
internal processes" rule), and agentd enables memory/cpu/pids down to its agents. So a
service cgroup that holds the agents can never take a new main process: the next
`systemctl restart agentd` fails with status 219/CGROUP while agents run. Two layouts
avoid that, chosen by where systemd put us:

- systemd >= 254 with `DelegateSubgroup=daemon` starts us in `<unit>/daemon`: the unit's
  cgroup is the root of agentd's tree (agents under `<unit>/agents`) and every restart
  lands in the `daemon` leaf again.
- older systemd (Debian 12 has 252) starts us in the unit's cgroup itself: the daemon
  stays there (the unit's MemoryMin=/OOMScoreAdjust= protect it; it never enables
  controllers there, so restarts always work) and the agents live in a top-level cgroup
  `agentd`, outside every unit, which systemd leaves alone.

Started by hand (no systemd), the root is the policy's, else `agentd`, and the daemon
moves itself into `<root>/daemon` so its memory can be protected there.
"""

import dataclasses

from .errors import AgentdError

# The leaf the daemon occupies under its root; `DelegateSubgroup=` in the unit names it too.
DAEMON_LEAF = "daemon"
# The tree's root when no one delegated one to us.
TOP_LEVEL_ROOT = "agentd"


class PlacementError(AgentdError):
    """The configured layout cannot work under this service manager."""


@dataclasses.dataclass(frozen=True)
class Placement:
    root: str            # agentd's tree, relative to the cgroup v2 mount, no slashes around
    self_cgroup: str     # where the daemon process lives once placed
    move: bool           # the daemon must move itself into self_cgroup
    protect: bool        # the daemon writes memory.min for itself (False: the unit's MemoryMin= does)
    layout: str          # "delegate-subgroup", "unit+top-level", "own" (for logs and doctor)


def decide(own_cgroup, under_systemd, configured_root=None):
    """The placement for a daemon whose cgroup is `own_cgroup` (from /proc/self/cgroup).

    `under_systemd`: systemd started us as a service's main process.
    `configured_root`: the root the command line or policy names, if any (it wins).
    """
    own = own_cgroup.strip("/")
    configured = (configured_root or "").strip("/") or None
    if under_systemd and own:
        # systemd tracks its main process by cgroup: never move out of the unit.
        parent, _, leaf = own.rpartition("/")
        if leaf == DAEMON_LEAF and parent:
            root = configured or parent
            return Placement(root, own, move=False, protect=False,
                             layout="delegate-subgroup" if root == parent else "unit+configured")
        root = configured or TOP_LEVEL_ROOT
        if _inside(own, root) or _inside(root, own):
            raise PlacementError(
                f"the cgroup root {root} shares the service's own cgroup {own}: systemd could start no "
                f"new daemon there while agents run (status 219/CGROUP). Add DelegateSubgroup={DAEMON_LEAF} "
                "to the unit (systemd >= 254; `agentd install` does) or leave daemon.root at auto")
        return Placement(root, own, move=False, protect=False,
                         layout="unit+top-level" if root == TOP_LEVEL_ROOT else "unit+configured")
    root = configured or TOP_LEVEL_ROOT
    leaf = f"{root}/{DAEMON_LEAF}"
    return Placement(root, leaf, move=own != leaf, protect=True, layout="own")


def _inside(cg, root):
    return cg == root or cg.startswith(root + "/")
