"""``probe``: what a GPU host looks like right now, in one round-trip of the shell runner.

One script prints every section behind a ``@@spark:<name>`` marker line; pure parsers
turn each section into the ProbeResult fields. The script reads /proc with shell builtins and
starts df, docker and nvidia-smi side by side (each slow on a real host), so a probe costs
three process starts, run in parallel. A DGX Spark's GPU shares the unified
memory, so memory comes from /proc/meminfo and nvidia-smi's memory fields read [N/A].
"""

from __future__ import annotations

import re
import time
from collections.abc import Collection

import msgspec

from app.contracts import Container, DiskUsage, Gpu, ProbeResult
from app.errors import HostError
from workers.runner import ShellRunner

MARK = "@@spark:"
GPU_QUERY = "name,utilization.gpu,memory.used,memory.total,temperature.gpu,power.draw"

SLOW_SOURCES = ("disk", "docker", "gpu")
"""Sections that start a process on the host (df, docker, nvidia-smi); /proc is read with
builtins. A probe may reuse these from a recent one (``probe_max_age_s``)."""
SLOW_SECTIONS = frozenset({"df", "docker", "docker-error", "no-docker", "gpu"})

_HEAD = "export LC_ALL=C\n"
_START = {
    "disk": """hf="${{HF_HOME:-$HOME/.cache/huggingface}}/hub"
while [ ! -e "$hf" ] && [ -n "$hf" ]; do hf="${{hf%/*}}"; done
hf="${{hf:-/}}"
exec 4< <(df -P -B1 -- "$HOME" "$hf" 2>/dev/null)
""",
    "docker": """dk=""
if command -v docker >/dev/null 2>&1; then
  dk=1; exec 5< <(docker ps --format '{{{{json .}}}}' 2>/dev/null || echo '{MARK}docker-error')
fi
""",
    "gpu": """gp=""
if command -v nvidia-smi >/dev/null 2>&1; then
  gp=1; exec 6< <(nvidia-smi --query-gpu={GPU_QUERY} --format=csv,noheader,nounits 2>/dev/null)
fi
""",
}
_PROC = """echo '{MARK}uptime'; read -r l < /proc/uptime; echo "$l"
echo '{MARK}loadavg'; read -r l < /proc/loadavg; echo "$l"
mapfile -t rows < /proc/meminfo; echo '{MARK}meminfo'; printf '%s\\n' "${{rows[@]}}"
"""
_READ = {
    "disk": """mapfile -t rows <&4
echo "{MARK}df $HOME"; printf '%s\\n' "${{rows[0]}}" "${{rows[1]}}"
echo "{MARK}df $hf"; printf '%s\\n' "${{rows[0]}}" "${{rows[2]}}"
""",
    "docker": """if [ -n "$dk" ]; then
  mapfile -t rows <&5; echo '{MARK}docker'; [ ${{#rows[@]}} -eq 0 ] || printf '%s\\n' "${{rows[@]}}"
else echo '{MARK}no-docker'; fi
""",
    "gpu": """if [ -n "$gp" ]; then
  mapfile -t rows <&6; echo '{MARK}gpu'; [ ${{#rows[@]}} -eq 0 ] || printf '%s\\n' "${{rows[@]}}"
fi
""",
}


def probe_script(live: Collection[str] = SLOW_SOURCES) -> str:
    """The probe as one script: /proc always, plus the ``live`` slow sources, which start
    side by side before /proc is read."""
    fmt = {"MARK": MARK, "GPU_QUERY": GPU_QUERY}
    parts = [_HEAD]
    parts += [_START[s].format(**fmt) for s in SLOW_SOURCES if s in live]
    parts.append(_PROC.format(**fmt))
    parts += [_READ[s].format(**fmt) for s in SLOW_SOURCES if s in live]
    parts.append("true\n")
    return "".join(parts)


PROBE_SCRIPT = probe_script()


def split_sections(text: str) -> list[tuple[str, str, str]]:
    """``@@spark:<name> <arg>`` markers → [(name, arg, body)] in order."""
    out: list[tuple[str, str, str]] = []
    for chunk in text.split(MARK)[1:]:
        head, _, body = chunk.partition("\n")
        name, _, arg = head.partition(" ")
        out.append((name.strip(), arg, body))
    return out


def parse_uptime(text: str) -> float:
    """/proc/uptime → seconds since boot."""
    return float(text.split()[0])


def parse_loadavg(text: str) -> tuple[float, float, float]:
    """/proc/loadavg → the 1, 5 and 15 minute load averages."""
    a, b, c = (float(x) for x in text.split()[:3])
    return a, b, c


def parse_meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo → {field: bytes} (``kB`` values are KiB)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        parts = rest.split()
        if not sep or not parts or not parts[0].isdigit():
            continue
        unit = parts[1].lower() if len(parts) > 1 else ""
        out[key.strip()] = int(parts[0]) * (1024 if unit == "kb" else 1)
    return out


_DF_ROW = re.compile(
    r"^(?P<fs>.*?)\s+(?P<total>\d+)\s+(?P<used>\d+)\s+(?P<free>\d+)\s+\S+\s+(?P<mnt>.*)$"
)


def parse_df(text: str) -> list[DiskUsage]:
    """``df -P -B1`` output → one DiskUsage per filesystem row (path = mount point)."""
    disks = []
    for line in text.splitlines():
        m = _DF_ROW.match(line.strip())
        if m:
            disks.append(
                DiskUsage(
                    path=m["mnt"],
                    total_bytes=int(m["total"]),
                    used_bytes=int(m["used"]),
                    free_bytes=int(m["free"]),
                )
            )
    return disks


class _PsLine(msgspec.Struct):
    ID: str = ""
    Names: str = ""
    Image: str = ""
    Status: str = ""
    Ports: str = ""


def parse_docker_ps(text: str) -> list[Container]:
    """``docker ps --format '{{json .}}'`` → containers; lines that are not JSON are skipped."""
    out = []
    for line in text.splitlines():
        if not line.startswith("{"):
            continue
        try:
            row = msgspec.json.decode(line, type=_PsLine)
        except msgspec.DecodeError:
            continue
        c = Container(
            id=row.ID, name=row.Names, image=row.Image, status=row.Status, ports=row.Ports
        )
        out.append(c)
    return out


def _num(field: str) -> float | None:
    """A CSV number, or None for ``[N/A]``/``[Not Supported]``; raise ValueError on garbage."""
    field = field.strip()
    if field.startswith("[") or field in ("N/A", ""):
        return None
    return float(field)


def parse_nvidia_smi(text: str) -> list[Gpu]:
    """``nvidia-smi --query-gpu=<GPU_QUERY> --format=csv,noheader,nounits`` → GPUs."""
    gpus = []
    for line in text.splitlines():
        parts = line.rsplit(",", 5)
        if len(parts) != 6:
            continue
        try:
            util, used, total, temp, power = (_num(p) for p in parts[1:])
        except ValueError:
            continue
        gpus.append(
            Gpu(
                name=parts[0].strip(),
                utilization_pct=util,
                memory_used_mib=used,
                memory_total_mib=total,
                temperature_c=temp,
                power_w=power,
            )
        )
    return gpus


def parse_probe(host: str, text: str, *, probed_at: float, duration_ms: float) -> ProbeResult:
    """The whole PROBE_SCRIPT output → ProbeResult; HostError if a /proc section is missing."""
    sections = split_sections(text)
    named = {name: body for name, _, body in sections}
    try:
        uptime = parse_uptime(named["uptime"])
        load = parse_loadavg(named["loadavg"])
        mem = parse_meminfo(named["meminfo"])
        mem_total, mem_avail = mem["MemTotal"], mem["MemAvailable"]
    except (KeyError, ValueError, IndexError) as exc:
        raise HostError(f"probe of {host}: unexpected /proc output ({exc!r})") from exc
    disks: list[DiskUsage] = []
    for name, arg, body in sections:
        if name == "df" and (rows := parse_df(body)) and all(d.path != arg for d in disks):
            disks.append(msgspec.structs.replace(rows[0], path=arg))
    docker = "docker" in named or "docker-error" in named
    return ProbeResult(
        host=host,
        uptime_s=uptime,
        load=load,
        mem_total_bytes=mem_total,
        mem_available_bytes=mem_avail,
        swap_total_bytes=mem.get("SwapTotal", 0),
        swap_free_bytes=mem.get("SwapFree", 0),
        disks=disks,
        docker=docker,
        containers=parse_docker_ps(named.get("docker", "")),
        gpus=parse_nvidia_smi(named.get("gpu", "")),
        probed_at=probed_at,
        duration_ms=duration_ms,
    )


SAMPLE_MEMO = "probe.slow"


def _slow_text(text: str) -> str:
    """The slow sections of a probe's output, as they came (markers included)."""
    return "".join(
        f"{MARK}{name}{' ' + arg if arg else ''}\n{body}"
        for name, arg, body in split_sections(text)
        if name in SLOW_SECTIONS
    )


async def probe(
    runner: ShellRunner,
    host: str,
    *,
    timeout: float,  # noqa: ASYNC109 (budget of the command)
    max_age_s: float = 0.0,
) -> ProbeResult:
    """Probe ``host`` through its runner in one command. /proc is read live; disks,
    containers and GPUs are reused from a probe at most ``max_age_s`` old if the runner's
    memo still holds them (nothing that may change the host ran since)."""
    probed_at = time.time()
    t0 = time.perf_counter()
    kept = runner.memo.get(SAMPLE_MEMO)
    reuse = kept is not None and max_age_s > 0 and probed_at - kept[1] <= max_age_s
    res = await runner.run(
        probe_script(set() if reuse else SLOW_SOURCES), timeout=timeout, reads_only=True
    )
    duration_ms = (time.perf_counter() - t0) * 1000
    if reuse and kept is not None:
        text, sampled_at = res.stdout + kept[0], kept[1]
    else:
        text, sampled_at = res.stdout, probed_at
    result = parse_probe(host, text, probed_at=probed_at, duration_ms=duration_ms)
    result.sampled_at = sampled_at
    if not reuse:
        runner.memo[SAMPLE_MEMO] = (_slow_text(res.stdout), probed_at)
    return result
