# prints who answers: pod & host, v4/v6, udp/tcp
for src in pod node; do for a in 10.96.0.10 fd00:96::10; do for p in udp tcp; do
 printf "%s %s %s -> %s\n" $src $a $p "$(ip netns exec nd-lab-$src python3 /tmp/ndlab/q.py $a 53 $p)"; done; done; done
