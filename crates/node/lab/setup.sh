set -e
N=nd-lab-node P=nd-lab-pod U=nd-lab-up
for n in $N $P $U; do ip netns del $n 2>/dev/null || true; ip netns add $n; ip -n $n link set lo up; done
ip -n $N link add vp type veth peer name eth0 netns $P
ip -n $N link add vu type veth peer name eth0 netns $U
ip -n $N addr add 10.244.1.1/24 dev vp; ip -n $N addr add fd00:1::1/64 dev vp nodad
ip -n $N addr add 10.244.2.1/24 dev vu; ip -n $N addr add fd00:2::1/64 dev vu nodad
ip -n $P addr add 10.244.1.2/24 dev eth0; ip -n $P addr add fd00:1::2/64 dev eth0 nodad
ip -n $U addr add 10.244.2.2/24 dev eth0; ip -n $U addr add fd00:2::2/64 dev eth0 nodad
for n in $N $P $U; do for l in $(ip -n $n -o link | awk -F': ' '{print $2}' | cut -d@ -f1); do ip -n $n link set $l up; done; done
ip -n $P route add default via 10.244.1.1; ip -n $P -6 route add default via fd00:1::1
ip -n $U route add default via 10.244.2.1; ip -n $U -6 route add default via fd00:2::1
ip netns exec $N sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
# kube-proxy stand-in (iptables-nft, as kube-proxy iptables mode would do)
for c in PREROUTING OUTPUT; do for p in udp tcp; do
 ip netns exec $N iptables -t nat -A $c -d 10.96.0.10 -p $p --dport 53 -j DNAT --to-destination 10.244.2.2:53
 ip netns exec $N ip6tables -t nat -A $c -d fd00:96::10 -p $p --dport 53 -j DNAT --to-destination [fd00:2::2]:53
done; done
# nodelocaldns interface (bridge: no dummy in this kernel)
ip -n $N link add nodelocaldns type bridge; ip -n $N addr add 10.96.0.10/32 dev nodelocaldns; ip -n $N addr add fd00:96::10/128 dev nodelocaldns nodad; ip -n $N link set nodelocaldns up
# upstream responders
ip netns exec $U python3 /tmp/ndlab/resp.py 10.244.2.2 53 upstream4 >/dev/null 2>&1 &
ip netns exec $U python3 /tmp/ndlab/resp.py fd00:2::2 53 upstream6 >/dev/null 2>&1 &
for i in $(seq 50); do [ -f /tmp/ndlab/ready.upstream4 ] && [ -f /tmp/ndlab/ready.upstream6 ] && break; sleep 0.1; done
