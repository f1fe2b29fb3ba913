# fish completion for sockstat. Generated from the command line by `python -m sockstat.completions`; do not edit.
# Install: copy it to ~/.config/fish/completions/sockstat.fish

# The (sub)command the cursor is in: walks the tokens, skipping option values.
function __sockstat_node
    set -l tokens (commandline -opc)
    set -e tokens[1]
    set -l node ''
    set -l skip 0
    for token in $tokens
        if test $skip -eq 1
            set skip 0
            continue
        end
        switch "$node|$token"
            case '|--port' '|-p' '|--sport' '|--dport' '|--state' '|-s' '|--pid' '|--process' '|-P' '|--user' '|-U' '|--local' '|--remote' '|--rows' '|-n' '|--source'
                set skip 1
            case '|check'
                set node 'check'
            case '|export'
                set node 'export'
            case '|summary'
                set node 'summary'
            case '|watch'
                set node 'watch'
            case 'check|--port' 'check|-p' 'check|--sport' 'check|--dport' 'check|--state' 'check|-s' 'check|--pid' 'check|--process' 'check|-P' 'check|--user' 'check|-U' 'check|--local' 'check|--remote' 'check|--interval' 'check|-i' 'check|--close-wait-warn' 'check|--close-wait-crit' 'check|--close-wait-min-age' 'check|--time-wait-warn' 'check|--port-usage-warn' 'check|--port-usage-crit' 'check|--queue-warn' 'check|--syn-recv-warn' 'check|--syn-sent-warn' 'check|--stall-min-age' 'check|--source'
                set skip 1
            case 'export|--listen' 'export|--textfile' 'export|--interval' 'export|--top' 'export|--cache' 'export|--source'
                set skip 1
            case 'summary|--port' 'summary|-p' 'summary|--state' 'summary|-s' 'summary|--pid' 'summary|--process' 'summary|-P' 'summary|--local' 'summary|--remote' 'summary|--top' 'summary|--source'
                set skip 1
            case 'watch|--port' 'watch|-p' 'watch|--sport' 'watch|--dport' 'watch|--state' 'watch|-s' 'watch|--pid' 'watch|--process' 'watch|-P' 'watch|--user' 'watch|-U' 'watch|--local' 'watch|--remote' 'watch|--interval' 'watch|-i' 'watch|--count' 'watch|-c' 'watch|--top' 'watch|--source'
                set skip 1
        end
    end
    echo "$node"
end

function __sockstat_in
    set -l node (__sockstat_node)
    test "$node" = "$argv[1]"
end

complete -c sockstat -f
complete -c sockstat -n '__sockstat_in \'\'' -a 'check' -d 'Diagnose the socket table: CLOSE_WAIT leaks, TIME_WAIT pile-ups and port...'
complete -c sockstat -n '__sockstat_in \'\'' -a 'export' -d 'Export metrics for Prometheus: sockets by state, accept queues, CLOSE_WAIT...'
complete -c sockstat -n '__sockstat_in \'\'' -a 'summary' -d 'Counts by state (TCP and UDP, IPv4 and IPv6), top local ports, remote hosts...'
complete -c sockstat -n '__sockstat_in \'\'' -a 'watch' -d 'Live view: sockets per state, their change and history, churn, top lists,...'
complete -c sockstat -n '__sockstat_in \'\'' -l port -s p -x -d 'Local or remote port (repeatable; 8000-8100 ranges, a,b lists)'
complete -c sockstat -n '__sockstat_in \'\'' -l sport -x -d 'Local (source) port'
complete -c sockstat -n '__sockstat_in \'\'' -l dport -x -d 'Remote (destination) port'
complete -c sockstat -n '__sockstat_in \'\'' -l state -s s -x -a 'listen\\tstate syn-sent\\tstate syn-recv\\tstate established\\tstate fin-wait1\\tstate fin-wait2\\tstate close-wait\\tstate closing\\tstate last-ack\\tstate time-wait\\tstate close\\tstate new-syn-recv\\tstate bound-inactive\\tstate all\\tstate connected\\tstate synchronized\\tstate bucket\\tstate big\\tstate' -d 'TCP state, any case, - or _ (time-wait, ESTABLISHED) or a group: connected,...'
complete -c sockstat -n '__sockstat_in \'\'' -l pid -x -d 'Owning process id (repeatable)'
complete -c sockstat -n '__sockstat_in \'\'' -l process -s P -x -d 'Owning process name contains this (case-insensitive)'
complete -c sockstat -n '__sockstat_in \'\'' -l user -s U -x -d 'Socket owner: user name or uid'
complete -c sockstat -n '__sockstat_in \'\'' -l local -x -d 'Local address or CIDR (127.0.0.0/8, ::1)'
complete -c sockstat -n '__sockstat_in \'\'' -l remote -x -d 'Remote address or CIDR'
complete -c sockstat -n '__sockstat_in \'\'' -l listening -s l -d 'Only listening TCP and unconnected UDP sockets'
complete -c sockstat -n '__sockstat_in \'\'' -l ipv4 -s 4 -d 'Only IPv4'
complete -c sockstat -n '__sockstat_in \'\'' -l ipv6 -s 6 -d 'Only IPv6'
complete -c sockstat -n '__sockstat_in \'\'' -l tcp -s t -d 'Only TCP'
complete -c sockstat -n '__sockstat_in \'\'' -l udp -s u -d 'Only UDP'
complete -c sockstat -n '__sockstat_in \'\'' -l json -d 'JSON for machines (every matching row)'
complete -c sockstat -n '__sockstat_in \'\'' -l csv -d 'CSV with a header row (every row)'
complete -c sockstat -n '__sockstat_in \'\'' -l all -s a -d 'On a terminal, show every row (default: at most --rows per state)'
complete -c sockstat -n '__sockstat_in \'\'' -l rows -s n -x -d 'Rows per state on a terminal'
complete -c sockstat -n '__sockstat_in \'\'' -l info -s i -d 'Add tcp_info columns: RTT, cwnd, unacked, retransmissions, time since last...'
complete -c sockstat -n '__sockstat_in \'\'' -l no-processes -d 'Skip naming processes (faster on huge tables)'
complete -c sockstat -n '__sockstat_in \'\'' -l source -x -a 'auto\\tsource netlink\\tsource proc\\tsource psutil\\tsource' -d 'Where sockets come from: netlink (Linux default), /proc, or psutil (portable)'
complete -c sockstat -n '__sockstat_in \'\'' -l version -s V -d 'Show the version and exit'
complete -c sockstat -n '__sockstat_in \'\'' -l help -s h -d 'Show this message and exit'
complete -c sockstat -n '__sockstat_in \'check\'' -l port -s p -x -d 'Local or remote port (repeatable; 8000-8100 ranges, a,b lists)'
complete -c sockstat -n '__sockstat_in \'check\'' -l sport -x -d 'Local (source) port'
complete -c sockstat -n '__sockstat_in \'check\'' -l dport -x -d 'Remote (destination) port'
complete -c sockstat -n '__sockstat_in \'check\'' -l state -s s -x -a 'listen\\tstate syn-sent\\tstate syn-recv\\tstate established\\tstate fin-wait1\\tstate fin-wait2\\tstate close-wait\\tstate closing\\tstate last-ack\\tstate time-wait\\tstate close\\tstate new-syn-recv\\tstate bound-inactive\\tstate all\\tstate connected\\tstate synchronized\\tstate bucket\\tstate big\\tstate' -d 'TCP state, any case, - or _ (time-wait, ESTABLISHED) or a group: connected,...'
complete -c sockstat -n '__sockstat_in \'check\'' -l pid -x -d 'Owning process id (repeatable)'
complete -c sockstat -n '__sockstat_in \'check\'' -l process -s P -x -d 'Owning process name contains this (case-insensitive)'
complete -c sockstat -n '__sockstat_in \'check\'' -l user -s U -x -d 'Socket owner: user name or uid'
complete -c sockstat -n '__sockstat_in \'check\'' -l local -x -d 'Local address or CIDR (127.0.0.0/8, ::1)'
complete -c sockstat -n '__sockstat_in \'check\'' -l remote -x -d 'Remote address or CIDR'
complete -c sockstat -n '__sockstat_in \'check\'' -l ipv4 -s 4 -d 'Only IPv4'
complete -c sockstat -n '__sockstat_in \'check\'' -l ipv6 -s 6 -d 'Only IPv6'
complete -c sockstat -n '__sockstat_in \'check\'' -l json -d 'JSON for machines (every matching row)'
complete -c sockstat -n '__sockstat_in \'check\'' -l interval -s i -x -d 'Seconds between the two kernel counter samples that rates come from; 0 = one...'
complete -c sockstat -n '__sockstat_in \'check\'' -l host-checks -l no-host-checks -d 'Include host-wide findings (TIME_WAIT buckets, orphans, counter-only overflows)'
complete -c sockstat -n '__sockstat_in \'check\'' -l close-wait-warn -x -d 'CLOSE_WAIT sockets per process for a warning'
complete -c sockstat -n '__sockstat_in \'check\'' -l close-wait-crit -x -d 'CLOSE_WAIT sockets per process for critical'
complete -c sockstat -n '__sockstat_in \'check\'' -l close-wait-min-age -x -d 'Seconds idle before a CLOSE_WAIT socket counts'
complete -c sockstat -n '__sockstat_in \'check\'' -l time-wait-warn -x -d 'TIME_WAIT per destination or per service for a warning'
complete -c sockstat -n '__sockstat_in \'check\'' -l port-usage-warn -x -d '% of usable ephemeral ports per destination: warning'
complete -c sockstat -n '__sockstat_in \'check\'' -l port-usage-crit -x -d '% of usable ephemeral ports per destination: critical'
complete -c sockstat -n '__sockstat_in \'check\'' -l queue-warn -x -d 'Accept queue % of backlog for a warning (full = critical)'
complete -c sockstat -n '__sockstat_in \'check\'' -l syn-recv-warn -x -d 'Half-open (SYN_RECV) connections per listener: warning'
complete -c sockstat -n '__sockstat_in \'check\'' -l syn-sent-warn -x -d 'Unanswered SYN_SENT per destination: warning'
complete -c sockstat -n '__sockstat_in \'check\'' -l stall-min-age -x -d 'Seconds data must be stuck before a connection is stalled'
complete -c sockstat -n '__sockstat_in \'check\'' -l source -x -a 'auto\\tsource netlink\\tsource proc\\tsource psutil\\tsource' -d 'Where sockets come from: netlink (Linux default), /proc, or psutil (portable)'
complete -c sockstat -n '__sockstat_in \'check\'' -l help -s h -d 'Show this message and exit'
complete -c sockstat -n '__sockstat_in \'export\'' -l listen -x -d 'Address to serve /metrics on (default 127.0.0.1:9977, loopback only)'
complete -c sockstat -n '__sockstat_in \'export\'' -l textfile -r -F -d 'Write the metrics to PATH (atomically) for node_exporter\'s textfile...'
complete -c sockstat -n '__sockstat_in \'export\'' -l interval -x -d 'With --textfile: rewrite the file every SECONDS until stopped (default:...'
complete -c sockstat -n '__sockstat_in \'export\'' -l top -x -d 'Series kept per process, destination and listener label; the rest are summed...'
complete -c sockstat -n '__sockstat_in \'export\'' -l cache -x -d 'Reuse a collection for this long, so concurrent scrapes share one'
complete -c sockstat -n '__sockstat_in \'export\'' -l no-processes -d 'Skip naming processes (CLOSE_WAIT per process becomes \'unknown\'; faster on...'
complete -c sockstat -n '__sockstat_in \'export\'' -l rules -d 'Print the example Prometheus alerting rules and exit'
complete -c sockstat -n '__sockstat_in \'export\'' -l source -x -a 'auto\\tsource netlink\\tsource proc\\tsource psutil\\tsource' -d 'Where sockets come from: netlink (Linux default), /proc, or psutil (portable)'
complete -c sockstat -n '__sockstat_in \'export\'' -l help -s h -d 'Show this message and exit'
complete -c sockstat -n '__sockstat_in \'summary\'' -l port -s p -x -d 'Local or remote port (repeatable; 8000-8100 ranges, a,b lists)'
complete -c sockstat -n '__sockstat_in \'summary\'' -l state -s s -x -a 'listen\\tstate syn-sent\\tstate syn-recv\\tstate established\\tstate fin-wait1\\tstate fin-wait2\\tstate close-wait\\tstate closing\\tstate last-ack\\tstate time-wait\\tstate close\\tstate new-syn-recv\\tstate bound-inactive\\tstate all\\tstate connected\\tstate synchronized\\tstate bucket\\tstate big\\tstate' -d 'TCP state, any case, - or _ (time-wait, ESTABLISHED) or a group: connected,...'
complete -c sockstat -n '__sockstat_in \'summary\'' -l pid -x -d 'Owning process id (repeatable)'
complete -c sockstat -n '__sockstat_in \'summary\'' -l process -s P -x -d 'Owning process name contains this (case-insensitive)'
complete -c sockstat -n '__sockstat_in \'summary\'' -l local -x -d 'Local address or CIDR (127.0.0.0/8, ::1)'
complete -c sockstat -n '__sockstat_in \'summary\'' -l remote -x -d 'Remote address or CIDR'
complete -c sockstat -n '__sockstat_in \'summary\'' -l ipv4 -s 4 -d 'Only IPv4'
complete -c sockstat -n '__sockstat_in \'summary\'' -l ipv6 -s 6 -d 'Only IPv6'
complete -c sockstat -n '__sockstat_in \'summary\'' -l tcp -s t -d 'Only TCP'
complete -c sockstat -n '__sockstat_in \'summary\'' -l udp -s u -d 'Only UDP'
complete -c sockstat -n '__sockstat_in \'summary\'' -l json -d 'JSON for machines (every matching row)'
complete -c sockstat -n '__sockstat_in \'summary\'' -l top -x -d 'Rows in each top list'
complete -c sockstat -n '__sockstat_in \'summary\'' -l no-processes -d 'Skip the top-processes list (faster on huge tables)'
complete -c sockstat -n '__sockstat_in \'summary\'' -l source -x -a 'auto\\tsource netlink\\tsource proc\\tsource psutil\\tsource' -d 'Where sockets come from: netlink (Linux default), /proc, or psutil (portable)'
complete -c sockstat -n '__sockstat_in \'summary\'' -l help -s h -d 'Show this message and exit'
complete -c sockstat -n '__sockstat_in \'watch\'' -l port -s p -x -d 'Local or remote port (repeatable; 8000-8100 ranges, a,b lists)'
complete -c sockstat -n '__sockstat_in \'watch\'' -l sport -x -d 'Local (source) port'
complete -c sockstat -n '__sockstat_in \'watch\'' -l dport -x -d 'Remote (destination) port'
complete -c sockstat -n '__sockstat_in \'watch\'' -l state -s s -x -a 'listen\\tstate syn-sent\\tstate syn-recv\\tstate established\\tstate fin-wait1\\tstate fin-wait2\\tstate close-wait\\tstate closing\\tstate last-ack\\tstate time-wait\\tstate close\\tstate new-syn-recv\\tstate bound-inactive\\tstate all\\tstate connected\\tstate synchronized\\tstate bucket\\tstate big\\tstate' -d 'TCP state, any case, - or _ (time-wait, ESTABLISHED) or a group: connected,...'
complete -c sockstat -n '__sockstat_in \'watch\'' -l pid -x -d 'Owning process id (repeatable)'
complete -c sockstat -n '__sockstat_in \'watch\'' -l process -s P -x -d 'Owning process name contains this (case-insensitive)'
complete -c sockstat -n '__sockstat_in \'watch\'' -l user -s U -x -d 'Socket owner: user name or uid'
complete -c sockstat -n '__sockstat_in \'watch\'' -l local -x -d 'Local address or CIDR (127.0.0.0/8, ::1)'
complete -c sockstat -n '__sockstat_in \'watch\'' -l remote -x -d 'Remote address or CIDR'
complete -c sockstat -n '__sockstat_in \'watch\'' -l listening -s l -d 'Only listening TCP and unconnected UDP sockets'
complete -c sockstat -n '__sockstat_in \'watch\'' -l ipv4 -s 4 -d 'Only IPv4'
complete -c sockstat -n '__sockstat_in \'watch\'' -l ipv6 -s 6 -d 'Only IPv6'
complete -c sockstat -n '__sockstat_in \'watch\'' -l tcp -s t -d 'Only TCP'
complete -c sockstat -n '__sockstat_in \'watch\'' -l udp -s u -d 'Only UDP'
complete -c sockstat -n '__sockstat_in \'watch\'' -l interval -s i -x -d 'Seconds between refreshes'
complete -c sockstat -n '__sockstat_in \'watch\'' -l count -s c -x -d 'Stop after this many refreshes (default: never)'
complete -c sockstat -n '__sockstat_in \'watch\'' -l jsonl -d 'One JSON object per refresh (the default when stdout is not a terminal)'
complete -c sockstat -n '__sockstat_in \'watch\'' -l top -x -d 'Rows in each top list'
complete -c sockstat -n '__sockstat_in \'watch\'' -l no-processes -d 'Skip naming processes (no top processes, no TIME_WAIT owners)'
complete -c sockstat -n '__sockstat_in \'watch\'' -l source -x -a 'auto\\tsource netlink\\tsource proc\\tsource psutil\\tsource' -d 'Where sockets come from: netlink (Linux default), /proc, or psutil (portable)'
complete -c sockstat -n '__sockstat_in \'watch\'' -l help -s h -d 'Show this message and exit'
