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

import msgspec

from app.contracts import Container, DiskUsage, Gpu, ProbeResult
from app.errors import HostError
from workers.runner import ShellRunner

MARK = "@@spark:"
GPU_QUERY = "name,utilization.gpu,memory.used,memory.total,temperature.gpu,power.draw"

PROBE_SCRIPT = f"""export LC_ALL=C
hf="${{HF_HOME:-$HOME/.cache/huggingface}}/hub"
while [ ! -e "$hf" ] && [ -n "$hf" ]; do hf="${{hf%/*}}"; done
hf="${{hf:-/}}"; dk=""; gp=""
exec 4< <(df -P -B1 -- "$HOME" "$hf" 2>/dev/null)
if command -v docker >/dev/null 2>&1; then
  dk=1; exec 5< <(docker ps --format '{{{{json .}}}}' 2>/dev/null || echo '{MARK}docker-error')
fi
if command -v nvidia-smi >/dev/null 2>&1; then
  gp=1; exec 6< <(nvidia-smi --query-gpu={GPU_QUERY} --format=csv,noheader,nounits 2>/dev/null)
fi
echo '{MARK}uptime'; read -r l < /proc/uptime; echo "$l"
echo '{MARK}loadavg'; read -r l < /proc/loadavg; echo "$l"
echo '{MARK}meminfo'; while IFS= read -r l; do echo "$l"; done < /proc/meminfo
mapfile -t rows <&4
echo "{MARK}df $HOME"; printf '%s\\n' "${{rows[0]}}" "${{rows[1]}}"
echo "{MARK}df $hf"; printf '%s\\n' "${{rows[0]}}" "${{rows[2]}}"
if [ -n "$dk" ]; then
  echo '{MARK}docker'; while IFS= read -r l; do echo "$l"; done <&5
else echo '{MARK}no-docker'; fi
if [ -n "$gp" ]; then
  echo '{MARK}gpu'; while IFS= read -r l; do echo "$l"; done <&6
fi
true
"""


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


async def probe(
    runner: ShellRunner,
    host: str,
    *,
    timeout: float,  # noqa: ASYNC109 (budget of the command)
) -> ProbeResult:
    """Probe ``host`` through its runner in one command."""
    probed_at = time.time()
    t0 = time.perf_counter()
    res = await runner.run(PROBE_SCRIPT, timeout=timeout)
    duration_ms = (time.perf_counter() - t0) * 1000
    return parse_probe(host, res.stdout, probed_at=probed_at, duration_ms=duration_ms)
