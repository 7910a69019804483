# tiny UDP+TCP responder: replies with its label. usage: resp.py ADDR PORT LABEL
import socket, sys, threading, os
addr, port, label = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
fam = socket.AF_INET6 if ':' in addr else socket.AF_INET
u = socket.socket(fam, socket.SOCK_DGRAM)
u.setsockopt(socket.SOL_IP, 15, 1)  # IP_FREEBIND
u.bind((addr, port))
t = socket.socket(fam, socket.SOCK_STREAM)
t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.setsockopt(socket.SOL_IP, 15, 1)
t.bind((addr, port)); t.listen(16)
def tcp():
    while True:
        c, _ = t.accept(); c.recv(100); c.sendall(label); c.close()
threading.Thread(target=tcp, daemon=True).start()
open(f"/tmp/ndlab/ready.{label.decode()}", "w").write(str(os.getpid()))
while True:
    d, a = u.recvfrom(100); u.sendto(label, a)
