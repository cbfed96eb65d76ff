#!/bin/bash
# Idle-connection memory of ringmq: RSS before and with N idle clients.
N=${1:-15000}
P=$(python3 -c "import socket;s=socket.socket();s.bind(('127.0.0.1',0));print(s.getsockname()[1])")
ulimit -n 20000
./target/release/ringmq --listen 127.0.0.1:$P --shards 2 --log warn &
B=$!
sleep 1
R0=$(awk '/VmRSS/ {print $2}' /proc/$B/status)
./target/release/ringmq-bench conn --host 127.0.0.1:$P --clients $N --connect-rate 5000 --keepalive 120 --duration 8s --ifaddr 127.0.0.2-127.0.0.9 > /tmp/conn.out 2>&1 &
C=$!
sleep 9
R1=$(awk '/VmRSS/ {print $2}' /proc/$B/status)
FDS=$(ls /proc/$B/fd | wc -l)
wait $C
echo "bench exit: $?"
sleep 1
R2=$(awk '/VmRSS/ {print $2}' /proc/$B/status)
FDS2=$(ls /proc/$B/fd | wc -l)
kill -TERM $B; wait $B; echo "broker exit: $?"
echo "rss_before_kib=$R0 rss_with_${N}_kib=$R1 rss_after_kib=$R2 fds_with=$FDS fds_after=$FDS2"
python3 -c "print('per connection: %.0f bytes' % (($R1-$R0)*1024/$N))"
tail -5 /tmp/conn.out
