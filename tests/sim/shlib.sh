# Sourced by the shims in tests/shims (POSIX sh, shell builtins only: the probe counts the
# host's process starts). Sets SIM and defines:
#   sim_record NAME ARGS...  append {"argv":[NAME,ARGS...],"ts":<epoch seconds>} to
#                            $SIM/commands.log (argv exactly as received, JSON-escaped)
#   sim_now                  _now = seconds since the epoch (boot time + /proc/uptime)
#   sim_human SECONDS        _h = docker's HumanDuration ("5 seconds", "About a minute", ...)
SIM="${SPARK_SIM_DIR:-/tmp/spark-sim-$(id -u)}"
[ -d "$SIM" ] || mkdir -p "$SIM"
_NL='
'
_TAB='	'

_json() {  # $1 -> _o, the JSON string body (without the quotes)
  _s=$1 _o=
  while :; do
    case $_s in
      *[\"\\[:cntrl:]]*) ;;
      *) _o=$_o$_s; return ;;
    esac
    _p=${_s%%[\"\\[:cntrl:]]*}
    _s=${_s#"$_p"}
    _r=${_s#?}
    _c=${_s%"$_r"}
    _s=$_r
    case $_c in
      \"|\\) _o="$_o$_p\\$_c" ;;
      "$_NL") _o="$_o$_p\\n" ;;
      "$_TAB") _o="$_o$_p\\t" ;;
      *) _o="$_o$_p$(printf '\\u%04x' "'$_c")" ;;  # rare: a subshell is fine here
    esac
  done
}

sim_now() {  # boot time (centiseconds, cached in $SIM/.btime) + uptime
  _now=0
  { read -r _up _ < /proc/uptime; } 2>/dev/null || return 0
  _bt=
  { read -r _bt < "$SIM/.btime"; } 2>/dev/null
  case $_bt in
    [1-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9]) ;;
    *) while read -r _k _bt; do [ "$_k" = btime ] && break; done < /proc/stat
       _bt=${_bt}00  # whole seconds: up to 1 s early until dockersim.py refines it
       printf '%s\n' "$_bt" > "$SIM/.btime" ;;
  esac
  _cs=$((_bt + ${_up%.*}${_up#*.}))
  _f=$((_cs % 100))
  [ "$_f" -lt 10 ] && _f=0$_f
  _now=$((_cs / 100)).$_f
}

sim_record() {
  _line="{\"argv\":[\"$1\""
  shift
  for _a in "$@"; do
    _json "$_a"
    _line="$_line,\"$_o\""
  done
  sim_now
  printf '%s],"ts":%s}\n' "$_line" "$_now" >> "$SIM/commands.log"
}

sim_human() {
  _d=$1
  if [ "$_d" -lt 1 ]; then _h="Less than a second"
  elif [ "$_d" -eq 1 ]; then _h="1 second"
  elif [ "$_d" -lt 60 ]; then _h="$_d seconds"
  elif [ $((_d / 60)) -eq 1 ]; then _h="About a minute"
  elif [ "$_d" -lt 3600 ]; then _h="$((_d / 60)) minutes"
  else
    _hr=$(((_d + 1800) / 3600))
    if [ "$_hr" -eq 1 ]; then _h="About an hour"
    elif [ "$_hr" -lt 48 ]; then _h="$_hr hours"
    elif [ "$_hr" -lt 336 ]; then _h="$((_hr / 24)) days"
    elif [ "$_hr" -lt 1440 ]; then _h="$((_hr / 24 / 7)) weeks"
    elif [ "$_hr" -lt 17520 ]; then _h="$((_hr / 24 / 30)) months"
    else _h="$((_d / 3600 / 24 / 365)) years"; fi
  fi
}
