# query ADDR PORT PROTO -> prints reply label or TIMEOUT
import socket, sys
addr, port, proto = sys.argv[1], int(sys.argv[2]), sys.argv[3]
fam = socket.AF_INET6 if ':' in addr else socket.AF_INET
try:
    if proto == 'udp':
        s = socket.socket(fam, socket.SOCK_DGRAM); s.settimeout(0.5)
        s.sendto(b'q', (addr, port)); print(s.recvfrom(100)[0].decode())
    else:
        s = socket.create_connection((addr, port), timeout=0.5); s.sendall(b'q'); print(s.recv(100).decode())
except Exception as e:
    print('TIMEOUT' if isinstance(e, socket.timeout) else 'ERR:'+type(e).__name__)
