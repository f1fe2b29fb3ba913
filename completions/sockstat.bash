# bash completion for sockstat                              -*- shell-script -*-
# Generated from the command line by `python -m sockstat.completions`; do not edit.
# Install: source it from ~/.bashrc, or copy it to
# /usr/share/bash-completion/completions/sockstat (or ~/.local/share/bash-completion/completions/sockstat).

# _sockstat_node NODE: set opts (all options), vopts (the ones taking a value,
# space-padded) and subs (subcommands) of the command NODE ('' is sockstat itself).
_sockstat_node() {
    case "$1" in
        '')
            opts='--port -p --sport --dport --state -s --pid --process -P --user -U --local --remote --listening -l --ipv4 -4 --ipv6 -6 --tcp -t --udp -u --container --unix -x --path --json --csv --all -a --rows -n --info -i --memory -m --no-processes --source --netns --peer --version -V --help -h'
            vopts=' --port -p --sport --dport --state -s --pid --process -P --user -U --local --remote --container --path --rows -n --source --netns '
            subs='check completions demo explain export kill summary watch why' ;;
        'check')
            opts='--port -p --sport --dport --state -s --pid --process -P --user -U --local --remote --listening -l --ipv4 -4 --ipv6 -6 --tcp -t --udp -u --container --unix -x --path --json --interval --host-checks --no-host-checks --close-wait-warn --close-wait-crit --close-wait-min-age --time-wait-warn --port-usage-warn --port-usage-crit --queue-warn --syn-recv-warn --syn-sent-warn --stall-min-age --source --netns --help -h'
            vopts=' --port -p --sport --dport --state -s --pid --process -P --user -U --local --remote --container --path --interval --close-wait-warn --close-wait-crit --close-wait-min-age --time-wait-warn --port-usage-warn --port-usage-crit --queue-warn --syn-recv-warn --syn-sent-warn --stall-min-age --source --netns '
            subs='' ;;
        'completions')
            opts='--install --help -h'
            vopts='  '
            subs='' ;;
        'demo')
            opts='--hold --list --json --model --ipv6 -6 --packets --absolute --help -h'
            vopts=' --hold --model '
            subs='' ;;
        'explain')
            opts='--list --json --help -h'
            vopts='  '
            subs='' ;;
        'export')
            opts='--listen --textfile --interval --top --cache --no-processes --rules --dashboard --systemd-unit --source --netns --help -h'
            vopts=' --listen --textfile --interval --top --cache --source --netns '
            subs='' ;;
        'kill')
            opts='--port -p --sport --dport --state -s --pid --process -P --user -U --local --remote --listening -l --ipv4 -4 --ipv6 -6 --tcp -t --udp -u --container --unix -x --path --yes -y --json --netns --help -h'
            vopts=' --port -p --sport --dport --state -s --pid --process -P --user -U --local --remote --container --path --netns '
            subs='' ;;
        'summary')
            opts='--port -p --sport --dport --state -s --pid --process -P --user -U --local --remote --listening -l --ipv4 -4 --ipv6 -6 --tcp -t --udp -u --container --unix -x --path --json --top --no-processes --source --netns --help -h'
            vopts=' --port -p --sport --dport --state -s --pid --process -P --user -U --local --remote --container --path --top --source --netns '
            subs='' ;;
        'watch')
            opts='--port -p --sport --dport --state -s --pid --process -P --user -U --local --remote --listening -l --ipv4 -4 --ipv6 -6 --tcp -t --udp -u --container --unix -x --path --interval --count -c --jsonl --top --no-processes --source --netns --help -h'
            vopts=' --port -p --sport --dport --state -s --pid --process -P --user -U --local --remote --container --path --interval --count -c --top --source --netns '
            subs='' ;;
        'why')
            opts='--port -p --sport --dport --state -s --pid --process -P --user -U --local --remote --ipv4 -4 --ipv6 -6 --interval --json --netns --help -h'
            vopts=' --port -p --sport --dport --state -s --pid --process -P --user -U --local --remote --interval --netns '
            subs='' ;;
        *) opts=""; vopts=" "; subs="" ;;
    esac
}

# _sockstat_values NODE WHAT: the words for option WHAT of NODE, or for its
# positional argument #N; @files means file names.
_sockstat_values() {
    case "$1|$2" in
        '|--state'|'|-s'|'check|--state'|'check|-s'|'kill|--state'|'kill|-s'|'summary|--state'|'summary|-s'|'watch|--state'|'watch|-s'|'why|--state'|'why|-s')
            echo 'listen syn-sent syn-recv established fin-wait1 fin-wait2 close-wait closing last-ack time-wait close new-syn-recv bound-inactive all connected synchronized bucket big' ;;
        '|--source'|'check|--source'|'export|--source'|'summary|--source'|'watch|--source')
            echo 'auto netlink proc psutil' ;;
        'completions|#1')
            echo 'bash zsh fish' ;;
        'demo|--model')
            echo 'iterative thread fork' ;;
        'demo|#1')
            echo 'listen syn-sent syn-recv established fin-wait1 fin-wait2 close-wait closing last-ack time-wait handshake teardown restart reuseport half-close close-vs-shutdown backlog zero-window echo all' ;;
        'explain|#1')
            echo '2msl backlog close-vs-shutdown close-wait closed closing established fin-wait1 fin-wait2 half-close handshake header kill last-ack listen reuseaddr reuseport slow syn-recv syn-sent teardown time-wait window' ;;
        'export|--textfile')
            echo '@files' ;;
    esac
}

_sockstat() {
    local cur="${COMP_WORDS[COMP_CWORD]}" prev="" node="" word opts vopts subs
    local i positional=0 words
    COMPREPLY=()
    # Walk the words before the cursor: descend into subcommands, skip option values.
    for ((i = 1; i < COMP_CWORD; i++)); do
        word="${COMP_WORDS[i]}"
        _sockstat_node "$node"
        case "$word" in
            --*=*) ;;
            -*)
                if [[ "$vopts" == *" $word "* ]]; then
                    # the value, also when bash split --opt=value at the '='
                    [[ "${COMP_WORDS[i+1]}" == "=" ]] && ((i++))
                    ((i++))
                fi ;;
            *)
                if [[ " $subs " == *" $word "* ]]; then
                    node="${node:+$node }$word"; positional=0
                else
                    ((positional++))
                fi ;;
        esac
    done
    _sockstat_node "$node"
    # The option whose value is being completed, if any.
    local opt="" prefix=""
    if ((COMP_CWORD >= 2)); then
        prev="${COMP_WORDS[COMP_CWORD-1]}"
        if [[ "$prev" == "=" ]]; then
            prev="${COMP_WORDS[COMP_CWORD-2]}"
            [[ "$prev" == -* ]] && opt="$prev"
        elif [[ "$cur" == "=" && "$prev" == -* ]]; then
            opt="$prev"; cur=""
        elif [[ "$prev" == -* && "$vopts" == *" $prev "* ]]; then
            opt="$prev"
        fi
    elif ((COMP_CWORD == 1)); then prev=""; fi
    if [[ -z "$opt" && "$cur" == --*=* ]]; then
        opt="${cur%%=*}"; prefix="$opt="; cur="${cur#*=}"
    fi
    if [[ -n "$opt" ]]; then
        [[ "$vopts" == *" $opt "* ]] || return 0
        words="$(_sockstat_values "$node" "$opt")"
        if [[ "$words" == "@files" ]]; then
            COMPREPLY=($(compgen -f -- "$cur"))
            compopt -o filenames 2>/dev/null
        elif [[ -n "$words" ]]; then
            COMPREPLY=($(compgen -P "$prefix" -W "$words" -- "$cur"))
        fi
        return 0
    fi
    if [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
        return 0
    fi
    words="$(_sockstat_values "$node" "#$((positional + 1))")"
    [[ -z "$words" ]] && words="$(_sockstat_values "$node" "#*")"
    if [[ "$words" == "@files" ]]; then
        COMPREPLY=($(compgen -f -- "$cur"))
        compopt -o filenames 2>/dev/null
        return 0
    fi
    COMPREPLY=($(compgen -W "$subs $words" -- "$cur"))
}

complete -F _sockstat sockstat
