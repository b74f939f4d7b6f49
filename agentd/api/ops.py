"""The API's operations, one method per op (called by api.server with the peer's
credentials already read). A mixin of the daemon's App: the ops use its controller,
cgroupfs adapter, event log and hooks.

Authorisation: creating agents needs root or the API group, from outside every agent;
everything else is allowed only inside the caller's own agent, decided from
/proc/<pid>/cgroup of the caller. What these checks trust, by name:
- the caller is the process that connected, held by a pidfd (conn.proc): every read of
  /proc/<conn.pid> is followed by conn.verify_peer(), so it was that process's;
- a process the caller names (its child, to place) is held by a pidfd taken when it is
  checked; the controller verifies it again immediately before every move and
  oom_score_adj write, and a check that an await separates from its use runs again;
- a process inside an agent's cgroup has that agent's rights only, whatever its uid or
  groups: the agent runs code a model wrote.
"""

import asyncio
import time

from ..clip import clip_argv
from ..errors import AgentdError, PolicyError, RequestError
from ..monitor import containers
from .outbox import Outbox


class ApiOps:
    # What the API owns, made on first use (the daemon's App and the tests' small Ops
    # classes both mix ApiOps in): the outbox every notice leaves through, and the tool
    # starts each agent has waiting in admission.
    @property
    def outbox(self):
        box = self.__dict__.get("_outbox")
        if box is None:
            box = self.__dict__["_outbox"] = Outbox()
        return box

    @property
    def starts_pending(self):
        return self.__dict__.setdefault("_starts_pending", {})

    def _caller_agent(self, conn):
        try:
            cg = self.procfs.cgroup(conn.pid)
            conn.verify_peer()
        except AgentdError:
            raise RequestError("gone", f"caller pid {conn.pid} has exited") from None
        agent, tool = self.ctl.agent_of_cgroup(cg)
        return agent, tool, cg

    def _is_admin(self, conn):
        """Root or the API group, and not inside any agent (see the module's docstring)."""
        if not self.server.is_admin(conn):
            return False
        try:
            cg = self.procfs.cgroup(conn.pid)
            conn.verify_peer()
        except AgentdError:
            return False
        return not self.ctl.in_agents_tree(cg)

    def _hold_child(self, conn, pid, peer_cg):
        """The process to place, held by a pidfd, once checked to be the caller's own
        child still in the caller's cgroup. The caller closes it."""
        try:
            child = self.procfs.hold(pid)
        except AgentdError:
            raise RequestError("gone", f"process {pid} is gone") from None
        try:
            self._check_child(conn, child, peer_cg)
        except BaseException:
            child.close()
            raise
        return child

    def _still_alive(self, conn, child):
        try:
            conn.verify_peer()
        except AgentdError:
            raise RequestError("gone", f"caller pid {conn.pid} has exited") from None
        if child is not None:
            try:
                child.verify()
            except AgentdError:
                raise RequestError("gone", f"process {child.pid} is gone") from None

    def _check_child(self, conn, child, peer_cg):
        try:
            ppid = self.procfs.ppid(child.pid)
            child_cg = self.procfs.cgroup(child.pid)
            child.verify()            # what was read is the held process's
            conn.verify_peer()        # and its parent pid is our peer's
        except AgentdError:
            raise RequestError("gone", f"process {child.pid} is gone") from None
        if ppid != conn.pid:
            raise RequestError("not_child", f"process {child.pid} is not a child of the caller (pid {conn.pid})")
        if child_cg != peer_cg:
            raise RequestError("not_child", f"process {child.pid} is not in the caller's cgroup")

    def agent_policy_view(self, source, text):
        """(text, Policy) for `agentd run --policy P`: the agent's own policy within the
        daemon's; refused with every problem when it asks for more. None without one."""
        if text is None:
            if source:
                raise RequestError("bad_field", f"policy {source!r} came without its text: this agentd run is older "
                                                "than the daemon; the daemon does not read files named by a client")
            return None
        try:
            return self.ctl.agent_view(source, text)
        except PolicyError as err:
            raise RequestError("bad_policy", f"policy {source or '<agent policy>'} does not fit under the running "
                                             f"daemon's policy {self.policy.source}; nothing was started:\n{err}") \
                from None

    async def op_hello(self, conn, req):
        from .. import API_VERSION, __version__
        return {"version": __version__, "api": API_VERSION, "standalone": self.cfg.standalone}

    async def op_run_start(self, conn, req):
        if not self._is_admin(conn):
            if self.server.is_admin(conn):
                raise RequestError("forbidden", f"pid {conn.pid} runs inside an agent and may not create agents: "
                                                f"an agent has its own agent's rights only")
            raise RequestError("forbidden", f"uid {conn.uid} may not create agents: only root or members of "
                                            f"group {self.server.group!r} may")
        _, _, peer_cg = self._caller_agent(conn)
        with self._hold_child(conn, req["pid"], peer_cg) as child:
            view = self.agent_policy_view(req.get("policy"), req.get("policy_text"))
            agent = self.ctl.create_agent(req.get("name"), req.get("class"), uid=conn.uid,
                                          policy=req.get("policy"), standalone=self.cfg.standalone, view=view)
            try:
                self.ctl.place_main(agent, child)
            except AgentdError:
                self.ctl.remove_agent(agent, reason="placement failed")
                raise
        agent.argv = clip_argv(req.get("argv") or [])
        conn.agent = agent.agent_id
        return {"agent": agent.agent_id, "cgroup": agent.cgroup, "agent_class": agent.agent_class,
                "env": {"AGENTD_AGENT": agent.agent_id, "AGENTD_SOCKET": self.socket_path,
                        **containers.env(agent)}}

    async def op_run_done(self, conn, req):
        agent = self.ctl.agents.get(req["agent"])
        if agent is None:
            raise RequestError("no_agent", f"no agent {req['agent']!r}")
        if conn.agent != agent.agent_id and not self._is_admin(conn):
            raise RequestError("forbidden", "only the connection that started an agent may end it")
        await self._settle_agent(agent)
        self.ctl.remove_agent(agent, kill=True, reason="agent exited")
        conn.agent = None
        return {}

    async def _settle_agent(self, agent, timeout=1.0):
        """Give tool calls that are just finishing a moment to report before teardown."""
        deadline = time.monotonic() + timeout
        while any(not t.done for t in agent.tools.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    async def op_tool_start(self, conn, req):
        agent, _, peer_cg = self._caller_agent(conn)
        if agent is None:
            raise RequestError("not_in_agent", f"`agentd tool` must run inside an agent started with `agentd run` "
                                               f"(pid {conn.pid} is in cgroup {peer_cg})")
        child = None
        if "pid" in req:
            child = self._hold_child(conn, req["pid"], peer_cg)
        elif any((a == agent.agent_id) for a, _ in conn.tools):
            raise RequestError("busy", "this connection already has a tool call starting")
        try:
            # One agent's calls, running or waiting, are bounded: each holds a cgroup, a
            # connection and maybe a memory reservation other agents' calls are measured against.
            cap = self.ctl.planner.policy.daemon.max_tool_calls_per_agent
            pending = self.starts_pending
            held = sum(1 for t in agent.tools.values() if not t.done) + pending.get(agent.agent_id, 0)
            if held >= cap:
                raise RequestError("too_many_tools", f"agent {agent.agent_id} already has {held} tool calls running "
                                                     f"or waiting (policy daemon.max_tool_calls_per_agent: {cap}); "
                                                     f"wait for some to end")
            pending[agent.agent_id] = pending.get(agent.agent_id, 0) + 1
            try:
                ticket = await self.ctl.pipeline.admit(agent, req["argv"], req.get("class"), req.get("mem"),
                                                       req.get("pid"), self.outbox.to(conn))
            finally:
                pending[agent.agent_id] -= 1
                if not pending[agent.agent_id]:
                    del pending[agent.agent_id]
            # Where admission waited, the caller, its agent and its child are checked again,
            # now, against the identities held since the first check. A call admitted at
            # once ran no other request in between (the stages' admit does not suspend):
            # what the daemon knows of them cannot have changed, only whether they still live.
            if ticket.waited:
                again, _, now_cg = self._caller_agent(conn)
                if again is not agent or now_cg != peer_cg or self.ctl.agents.get(agent.agent_id) is not agent:
                    raise RequestError("gone", f"the caller (pid {conn.pid}) left agent {agent.agent_id} "
                                               f"while waiting")
                if child is not None:
                    self._check_child(conn, child, peer_cg)
            else:
                self._still_alive(conn, child)
            tool = self.ctl.start_tool(agent, child, req["argv"], req.get("class"), req.get("mem"),
                                       req.get("intent"), ticket=ticket)
        finally:
            if child is not None:
                child.close()
        self.outbox.bind(tool.key, conn)
        conn.tools.add((agent.agent_id, tool.tool_id))
        env = {"AGENTD_TOOL": tool.key}
        env.update(tool.placement.env)
        reply = {"agent": agent.agent_id, "tool": tool.tool_id, "cgroup": tool.cgroup, "env": env,
                 # the launcher's child sets it before exec (agentd/oom.py): inherited by all it forks
                 "oom_score_adj": self.ctl.launcher_oom_adj(agent, tool),
                 "messages": list(tool.placement.messages)}
        if self.ctl.launcher_places_itself(conn.pid) and conn.peer_alive():   # read-then-verify
            # Without "path" the launcher holds its child and asks for tool_attach.
            reply["path"] = self.fs.path(tool.cgroup)
        return reply

    async def op_tool_attach(self, conn, req):
        agent, _, peer_cg = self._caller_agent(conn)
        if agent is None or agent.agent_id != req["agent"] or (req["agent"], req["tool"]) not in conn.tools:
            raise RequestError("forbidden", "only the connection that started a tool call may attach to it")
        tool = agent.tools.get(req["tool"])
        if tool is None or tool.done:
            raise RequestError("no_tool", f"no running tool call {req['agent']}/{req['tool']}")
        with self._hold_child(conn, req["pid"], peer_cg) as child:
            self.ctl.attach(tool, child)
        return {}

    async def op_tool_done(self, conn, req):
        agent, _, _ = self._caller_agent(conn)
        if agent is None or agent.agent_id != req["agent"]:
            raise RequestError("forbidden", "a tool call can only be reported from inside its own agent")
        tool = agent.tools.get(req["tool"])
        if tool is None or tool.done:
            raise RequestError("no_tool", f"no running tool call {req['agent']}/{req['tool']}")
        rusage = {k: req[k] for k in ("wall_s", "utime_s", "stime_s", "maxrss_kb") if k in req}
        emptied = False
        if tool.plan.stragglers == "kill" and tool.plan.straggler_grace_s > 0:
            emptied = await self._await_empty(tool.cgroup, tool.plan.straggler_grace_s) == "empty"
        # The stages' end-of-call work (the forecast history's insert, releasing reservations
        # and BPF map entries) runs after the reply has left: the launcher's exit, and so the
        # agent, does not wait for it; it runs at the event loop's next turn.
        result = self.ctl.finish_tool(tool, status=req.get("status"), rusage=rusage, emptied=emptied,
                                      later=asyncio.get_running_loop().call_soon)
        conn.tools.discard((agent.agent_id, tool.tool_id))
        self.outbox.unbind(tool.key)
        from .feedback import messages_for
        return {"messages": messages_for(result), "result": result}

    async def _await_empty(self, cg, timeout):
        """"empty" (read so), "unknown" (no longer readable) or "populated" at the timeout."""
        deadline = time.monotonic() + timeout
        delay = 0.002
        while time.monotonic() < deadline:
            try:
                if not self.fs.populated(cg):
                    return "empty"
            except AgentdError:
                return "unknown"
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
        return "populated"

    async def op_status(self, conn, req):
        from .status import snapshot
        admin = self._is_admin(conn)
        only = None
        if not admin:
            agent, _, _ = self._caller_agent(conn)
            if agent is None:
                raise RequestError("forbidden", "status is for root, the agentd group, or processes inside an agent")
            only = agent.agent_id
        if req.get("agent"):
            if only and req["agent"] != only:
                raise RequestError("forbidden", "an agent may only inspect itself")
            only = req["agent"]
        return snapshot(self, only)

    async def op_reload(self, conn, req):
        if not self._is_admin(conn):
            raise RequestError("forbidden", "only root or the agentd group, from outside every agent, may reload "
                                            "the policy")
        ok, msg = self.reload()
        if not ok:
            raise RequestError("reload_failed", f"kept the previous policy: {msg}")
        return {"message": msg}

    def _target_tool(self, conn, req):
        agent = self.ctl.agents.get(req["agent"])
        caller, _, _ = self._caller_agent(conn)
        if not self._is_admin(conn) and (caller is None or agent is None or caller.agent_id != agent.agent_id):
            raise RequestError("forbidden", "a process may only act on tool calls of its own agent")
        tool = agent.tools.get(req["tool"]) if agent else None
        if tool is None or tool.done:
            raise RequestError("no_tool", f"no running tool call {req['agent']}/{req['tool']}")
        return tool

    def _set_frozen(self, conn, req, frozen):
        self.ctl.actuator.requested(self._target_tool(conn, req), "freeze" if frozen else "thaw")
        return {}

    async def op_freeze(self, conn, req):
        return self._set_frozen(conn, req, True)

    async def op_thaw(self, conn, req):
        return self._set_frozen(conn, req, False)

    async def op_kill(self, conn, req):
        self.ctl.actuator.requested(self._target_tool(conn, req), "kill")
        return {}

    def connection_lost(self, conn):
        for agent_id, tool_id in conn.tools:
            agent = self.ctl.agents.get(agent_id)
            tool = agent.tools.get(tool_id) if agent else None
            if tool:
                self.outbox.unbind(tool.key)
            if tool and not tool.done:
                tool.run.orphaned_since = time.monotonic()   # its launcher may reconnect; else the sweep finishes it
        if conn.agent:
            agent = self.ctl.agents.get(conn.agent)
            if agent:
                agent.detached = True
