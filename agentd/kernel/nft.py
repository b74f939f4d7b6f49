"""Egress classes by nftables, through pyroute2 (nfnetlink): the classifier where the
egress BPF program (agentd/kernel/bpf_egress.py) cannot run. The ruleset it installs (one
table, `inet agentd`: a rule per cgroup id marking skb->priority with its htb class) and
its pure builders are nft_rules.py's; this module is the netlink adapter.

The table is made with NFT_TABLE_F_OWNER: it belongs to this adapter's netlink socket and
the kernel removes it when that socket closes, so a daemon that dies leaves no rules
behind (as the BPF link does). close() deletes it first. agentd never reads or changes
another table; a table named `agentd` that this adapter did not make is refused.

Why a local extension of pyroute2's messages: pyroute2 0.9.7's `socket` expression knows
neither the key NFT_SOCKET_CGROUPV2 (3) nor the attribute NFTA_SOCKET_LEVEL (3) of
include/uapi/linux/netfilter/nf_tables.h (kernel 5.13 and later); `_rule_msg` below adds
them. Every change is one nfnetlink batch (NFNL_MSG_BATCH_BEGIN ... END), as nft sends
it, so the kernel applies it whole or not at all.

pyroute2 keeps one netlink socket per thread; the owner flag ties the table to one
socket, so all of an adapter's calls run on one thread of its own (bounded waits).
"""

import concurrent.futures
import errno
import threading
import time

from ..errors import KernelError
from .nft_rules import (  # noqa: F401 — re-exported: nft.X is the one front for the classifier
    BASE_CHAIN, CLASS_CHAIN, COMMENT, HOOK_PRIORITY, IFNAMSIZ, MAX_LEVEL, NF_ACCEPT, NF_INET_LOCAL_OUT,
    NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END, NFPROTO_INET, NFT_CMP_EQ, NFT_JUMP, NFT_META_OIFNAME,
    NFT_META_PRIORITY, NFT_REG_1, NFT_REG_VERDICT, NFT_RETURN, NFT_SOCKET_CGROUPV2, NFT_TABLE_F_OWNER, TABLE,
    class_rule, device_rule)

NETLINK_TIMEOUT_S = 10.0
# Counters are read back by a dump of the whole class chain (one message per rule, decoded
# in Python: ~0.4 ms a rule). A metrics scrape, which any local user can ask for, reads
# every rule's counters: it takes them from one dump no older than this.
COUNTERS_MAX_AGE_S = 1.0
NLM_F_ECHO = 0x8               # include/uapi/linux/netlink.h: the kernel answers with what it made


def _pyroute2():
    # Imported here: the daemon runs without pyroute2 when no policy limits the network.
    try:
        from pyroute2.netlink import NETLINK_NETFILTER, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_EXCL, \
            NLM_F_REQUEST
        from pyroute2.netlink.nfnetlink import NFNL_SUBSYS_NFTABLES, nfgen_msg
        from pyroute2.netlink.nfnetlink import nftsocket as N
        from pyroute2.netlink.nlsocket import AsyncNetlinkSocket
    except ImportError as err:
        raise KernelError("pyroute2 is not installed: network limits need it (pip install pyroute2)") from err
    return locals()


_classes = None


def _messages():
    """pyroute2's nftables socket and rule message, extended as the module doc says."""
    global _classes
    if _classes is not None:
        return _classes
    P = _pyroute2()
    N = P["N"]

    class _rule_msg(N.nft_rule_msg):
        class nft_expr(N.nft_rule_msg.nft_expr):
            class nft_socket(N.nft_regs):
                nla_map = (("NFTA_SOCKET_UNSPEC", "none"), ("NFTA_SOCKET_KEY", "be32"),
                           ("NFTA_SOCKET_DREG", "be32"), ("NFTA_SOCKET_LEVEL", "be32"))

    class _AsyncSocket(N.AsyncNFTSocket):
        # AsyncNFTSocket.__init__ takes no network namespace; this is it with one.
        def __init__(self, netns=None):
            P["AsyncNetlinkSocket"].__init__(self, family=P["NETLINK_NETFILTER"], netns=netns)
            sub = P["NFNL_SUBSYS_NFTABLES"] << 8
            policy = {t | sub: c for t, c in self.policy.items()}
            for t in (N.NFT_MSG_NEWRULE, N.NFT_MSG_GETRULE, N.NFT_MSG_DELRULE):
                policy[t | sub] = _rule_msg      # dumps answer NEWRULE: decode the level too
            self.register_policy(policy)
            self._proto_version, self._attr_revision, self._nfgen_family = 0, 0, NFPROTO_INET
            self._ts = threading.local()
            self._write_lock = threading.RLock()

    class _Socket(N.NFTSocket):
        def __init__(self, netns=None):
            self.asyncore = _AsyncSocket(netns)
            self.asyncore.local.keep_event_loop = True
            self.asyncore.event_loop.run_until_complete(self.asyncore.setup_endpoint())

    _classes = (P, _rule_msg, _Socket)
    return _classes


def _nl_error(what, err):
    code = getattr(err, "code", None) or getattr(err, "errno", None)
    hint = ""
    if code == errno.ENOENT:
        hint = " (the kernel lacks nf_tables' socket or meta expression: CONFIG_NFT_SOCKET)"
    elif code == errno.EOPNOTSUPP:
        hint = " (the kernel's socket expression has no cgroupv2 key: kernel 5.13 or later)"
    elif code == errno.EPERM:
        hint = " (needs CAP_NET_ADMIN)"
    text = err.args[-1] if getattr(err, "args", None) else err
    out = KernelError(f"nftables: {what}: {text} (errno {code}){hint}")
    out.code = code
    return out


# --- the adapter ---------------------------------------------------------------------------
class Classifier:
    """The `inet agentd` table in the network namespace `netns` (None: the caller's),
    marking packets that leave by `devices`. set / clear / counters per cgroup id, as the
    BPF program's map does; close() removes the table."""

    def __init__(self, devices, netns=None):
        self.netns = netns
        self.devices = list(devices)
        self.rules = {}            # cgroup id -> (level, classid)
        self.handles = {}          # cgroup id -> rule handle (from the last dump)
        self.offset = {}           # cgroup id -> counters of a rule replaced for it (counters only grow)
        self.dumps = 0             # chain dumps sent (each costs the daemon O(rules))
        self._chain = []           # cgroup ids in the class chain's order (kept here: no dump per change)
        self._counts = (float("-inf"), {})   # (monotonic time, counters by cgroup id) of the last dump
        self._sock = None
        self._positions = {}       # rule handle -> its place in the chain (from the last dump)
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="agentd-nft")
        try:
            self._call(self._open)
        except BaseException:
            self._thread.shutdown(wait=False)
            raise

    # All socket work runs on the adapter's own thread (see the module doc).
    def _call(self, fn, *args):
        try:
            return self._thread.submit(fn, *args).result(timeout=NETLINK_TIMEOUT_S)
        except concurrent.futures.TimeoutError:
            raise KernelError(f"nfnetlink did not answer within {NETLINK_TIMEOUT_S:g} s") from None

    def _msg(self, cls, mtype, nlflags=0, **attrs):
        P = _messages()[0]
        m = cls()
        m["attrs"] = [(cls.name2nla(k), v) for k, v in attrs.items()]
        m["header"]["type"] = (P["NFNL_SUBSYS_NFTABLES"] << 8) | mtype
        m["header"]["flags"] = P["NLM_F_REQUEST"] | P["NLM_F_ACK"] | nlflags
        m["nfgen_family"] = NFPROTO_INET
        return m

    def _batch(self, what, msgs, commit=True):
        """One transaction; commit=False: the kernel checks every message and then
        discards them all (a batch without its end is aborted), as `nft --check` does."""
        P = _messages()[0]
        marks = []
        for t in (NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END):
            m = P["nfgen_msg"]()
            m["res_id"] = P["NFNL_SUBSYS_NFTABLES"]
            m["header"]["type"], m["header"]["flags"] = t, P["NLM_F_REQUEST"]
            marks.append(m)
        try:
            return self._sock.nlm_request_batch([marks[0]] + msgs + ([marks[1]] if commit else []))
        except Exception as err:               # noqa: BLE001 — pyroute2's NetlinkError
            raise _nl_error(what, err) from err

    def _open(self):
        P, rule_msg, Socket = _messages()
        N = P["N"]
        try:
            self._sock = Socket(self.netns)
        except Exception as err:               # noqa: BLE001
            raise _nl_error("opening a netlink socket", err) from err
        msgs = [self._msg(N.nft_table_msg, N.NFT_MSG_NEWTABLE, P["NLM_F_CREATE"] | P["NLM_F_EXCL"],
                          name=TABLE, flags=NFT_TABLE_F_OWNER),
                self._msg(N.nft_chain_msg, N.NFT_MSG_NEWCHAIN, P["NLM_F_CREATE"], table=TABLE, name=BASE_CHAIN,
                          type="filter", policy=NF_ACCEPT,
                          hook={"attrs": [("NFTA_HOOK_HOOKNUM", NF_INET_LOCAL_OUT),
                                          ("NFTA_HOOK_PRIORITY", HOOK_PRIORITY)]}),
                self._msg(N.nft_chain_msg, N.NFT_MSG_NEWCHAIN, P["NLM_F_CREATE"], table=TABLE, name=CLASS_CHAIN)]
        for dev in self.devices:
            msgs.append(self._msg(rule_msg, N.NFT_MSG_NEWRULE, P["NLM_F_CREATE"] | P["NLM_F_APPEND"],
                                  table=TABLE, chain=BASE_CHAIN, expressions=device_rule(dev)))
        try:
            self._batch(f"creating table inet {TABLE}", msgs)
        except KernelError as err:
            # EEXIST: a table of that name; EPERM too where another socket owns it.
            taken = getattr(err, "code", None) in (errno.EEXIST, errno.EPERM) and self._table_exists()
            self._close_sock()
            if taken:
                raise KernelError(
                    f"an nftables table inet {TABLE} exists that this agentd did not make (another agentd "
                    f"runs, or one left it): agentd leaves it alone. Stop that daemon or remove the table "
                    f"(nft delete table inet {TABLE})") from err
            raise

    def _table_exists(self):
        P = _messages()[0]
        m = P["N"].nft_table_msg()
        try:
            found = self._sock.request_get(m, P["N"].NFT_MSG_GETTABLE)
            return any(t.get_attr("NFTA_TABLE_NAME") == TABLE for t in found)
        except Exception:                      # noqa: BLE001 — then the first error stands
            return False

    def set(self, cgroup_id, level, classid):
        """Mark packets of sockets in cgroup `cgroup_id` (at cgroup `level`) and below it
        with the htb `classid`. A cgroup that has a rule gets it replaced; its counts go on."""
        self._call(self._set, int(cgroup_id), int(level), int(classid))

    def _set(self, cid, level, classid):
        # O(1) netlink messages per rule: the new rule's handle comes back in the kernel's
        # echo and the chain's order is kept here, so a tool call's start never costs a
        # dump of every rule (which an agent can make many of, one per limited call).
        P, rule_msg, _ = _messages()
        N = P["N"]
        msgs = []
        if cid in self.rules:
            c = self._dump().get(cid)
            if c is not None:
                prev = self.offset.get(cid, {"bytes": 0, "packets": 0})
                self.offset[cid] = {k: prev[k] + c[k] for k in prev}
            msgs.append(self._msg(rule_msg, N.NFT_MSG_DELRULE, table=TABLE, chain=CLASS_CHAIN,
                                  handle=self.handles[cid]))
        # Deeper first: before the first rule of a shallower cgroup, else at the end.
        chain = [c for c in self._chain if c != cid]
        at = next((i for i, c in enumerate(chain) if self.rules[c][0] < level), None)
        attrs = dict(table=TABLE, chain=CLASS_CHAIN, expressions=class_rule(cid, level, classid),
                     userdata=COMMENT.format(cid))
        flags = P["NLM_F_CREATE"] | NLM_F_ECHO
        if at is None:
            msgs.append(self._msg(rule_msg, N.NFT_MSG_NEWRULE, flags | P["NLM_F_APPEND"], **attrs))
        else:
            msgs.append(self._msg(rule_msg, N.NFT_MSG_NEWRULE, flags, position=self.handles[chain[at]], **attrs))
        echo = self._batch(f"adding the rule of cgroup {cid}", msgs)
        if cid in self.rules:
            self._counts = (float("-inf"), {})   # the replaced rule's counts are in offset now
        self.rules[cid] = (level, classid)
        chain.insert(len(chain) if at is None else at, cid)
        self._chain = chain
        handle = next((m.get_attr("NFTA_RULE_HANDLE") for m in echo or ()
                       if m.get_attr("NFTA_RULE_USERDATA") == COMMENT.format(cid)), None)
        if handle is None:
            self._dump()               # a kernel that did not echo: read the handles back
        else:
            self.handles[cid] = handle

    def clear(self, cgroup_id):
        """Stop marking and counting `cgroup_id`; False if it had no rule."""
        return self._call(self._clear, int(cgroup_id))

    def _clear(self, cid):
        if cid not in self.rules:
            return False
        P, rule_msg, _ = _messages()
        self._batch(f"removing the rule of cgroup {cid}",
                    [self._msg(rule_msg, P["N"].NFT_MSG_DELRULE, table=TABLE, chain=CLASS_CHAIN,
                               handle=self.handles[cid])])
        del self.rules[cid]
        self.offset.pop(cid, None)
        self.handles.pop(cid, None)
        self._chain = [c for c in self._chain if c != cid]
        return True

    def counters(self, cgroup_id):
        """{'bytes', 'packets'} its rule counted (packets of no deeper limited cgroup), or None."""
        cid = int(cgroup_id)
        if cid not in self.rules:
            return None
        at, counts = self._counts
        if time.monotonic() - at > COUNTERS_MAX_AGE_S:
            counts = self._call(self._dump)
        c = counts.get(cid)
        if c is None:
            return None
        off = self.offset.get(cid, {"bytes": 0, "packets": 0})
        return {k: c[k] + off[k] for k in ("bytes", "packets")}

    def cgroups(self):
        return list(self.rules)

    def listing(self):
        """[(cgroup id, level, classid)] in the order the kernel walks them."""
        self._call(self._dump)
        order = sorted(self.rules, key=lambda c: self._positions.get(self.handles.get(c), 0))
        return [(c, *self.rules[c]) for c in order]

    def _dump(self):
        """Read the class chain back: handles, positions and counters by cgroup id."""
        P, rule_msg, _ = _messages()
        N = P["N"]
        m = rule_msg()
        m["attrs"] = [("NFTA_RULE_TABLE", TABLE), ("NFTA_RULE_CHAIN", CLASS_CHAIN)]
        try:
            rules = self._sock.request_get(m, N.NFT_MSG_GETRULE)
        except Exception as err:               # noqa: BLE001
            raise _nl_error(f"listing chain {CLASS_CHAIN}", err) from err
        self.dumps += 1
        out, self.handles, self._positions = {}, {}, {}
        for i, r in enumerate(rules):
            note = r.get_attr("NFTA_RULE_USERDATA") or ""
            if not note.startswith(COMMENT.format("")):
                continue
            cid = int(note[len(COMMENT.format("")):])
            handle = r.get_attr("NFTA_RULE_HANDLE")
            self.handles[cid], self._positions[handle] = handle, i
            for e in r.get_attr("NFTA_RULE_EXPRESSIONS") or []:
                if e.get_attr("NFTA_EXPR_NAME") == "counter":
                    d = e.get_attr("NFTA_EXPR_DATA")
                    out[cid] = {"bytes": d.get_attr("NFTA_COUNTER_BYTES") or 0,
                                "packets": d.get_attr("NFTA_COUNTER_PACKETS") or 0}
        self._chain = [c for c in sorted(self.handles, key=lambda c: self._positions[self.handles[c]])
                       if c in self.rules]
        self._counts = (time.monotonic(), out)
        return out

    def close(self):
        """Delete the table (the kernel would on the socket's close too) and the socket."""
        if self._sock is None:
            return
        try:
            self._call(self._close)
        finally:
            self._thread.shutdown(wait=False)

    def _close(self):
        P = _messages()[0]
        N = P["N"]
        try:
            self._batch(f"removing table inet {TABLE}",
                        [self._msg(N.nft_table_msg, N.NFT_MSG_DELTABLE, name=TABLE)])
        except KernelError as err:
            if getattr(err, "code", None) != errno.ENOENT:
                raise
        finally:
            self._close_sock()
            self.rules.clear()

    def _close_sock(self):
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.close()
            except Exception:                  # noqa: BLE001 — closing is best effort
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def probe(netns=None):
    """None if this kernel takes agentd's rules (nf_tables, the socket expression with
    its cgroupv2 key, meta priority), else the reason. Nothing is changed: the batch is
    sent without its end, so the kernel checks it and discards it."""
    def run():
        P, rule_msg, Socket = _messages()
        N = P["N"]
        c = Classifier.__new__(Classifier)
        try:
            c._sock = Socket(netns)
        except Exception as err:               # noqa: BLE001
            return str(_nl_error("opening a netlink socket", err))
        try:
            name = f"{TABLE}-probe"
            c._batch("checking the rules agentd would add", [
                c._msg(N.nft_table_msg, N.NFT_MSG_NEWTABLE, P["NLM_F_CREATE"], name=name),
                c._msg(N.nft_chain_msg, N.NFT_MSG_NEWCHAIN, P["NLM_F_CREATE"], table=name, name=BASE_CHAIN,
                       type="filter", hook={"attrs": [("NFTA_HOOK_HOOKNUM", NF_INET_LOCAL_OUT),
                                                      ("NFTA_HOOK_PRIORITY", HOOK_PRIORITY)]}),
                c._msg(rule_msg, N.NFT_MSG_NEWRULE, P["NLM_F_CREATE"] | P["NLM_F_APPEND"], table=name,
                       chain=BASE_CHAIN, expressions=class_rule(1, 0, 0))], commit=False)
            return None
        except KernelError as err:
            return str(err)
        finally:
            c._close_sock()
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as ex:
            return ex.submit(run).result(timeout=NETLINK_TIMEOUT_S)
    except concurrent.futures.TimeoutError:
        return f"nfnetlink did not answer within {NETLINK_TIMEOUT_S:g} s"
    except KernelError as err:
        return str(err)


def tables(netns=None):
    """The names of the inet tables in `netns` (read only; for checks and tests)."""
    def run():
        P, _, Socket = _messages()
        sock = Socket(netns)
        try:
            m = P["N"].nft_table_msg()
            return sorted(t.get_attr("NFTA_TABLE_NAME") for t in sock.request_get(m, P["N"].NFT_MSG_GETTABLE))
        finally:
            sock.close()
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        return ex.submit(run).result(timeout=NETLINK_TIMEOUT_S)
