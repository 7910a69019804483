/* getaddrinfo(AF_UNSPEC) for each name on the command line, as an application does: built with
 * gcc (glibc) and with musl-gcc -static (musl) by tests/e2e/clients.rs. One line per name:
 *   name <TAB> milliseconds <TAB> addresses, comma-separated <TAB> error ("" or NOTFOUND or why)
 */
#include <arpa/inet.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

int main(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_ADDRCONFIG;
    double t0 = now_ms();
    int rc = getaddrinfo(argv[i], NULL, &hints, &res);
    double ms = now_ms() - t0;
    printf("%s\t%.1f\t", argv[i], ms);
    int first = 1;
    for (struct addrinfo *a = rc == 0 ? res : NULL; a; a = a->ai_next) {
      char text[INET6_ADDRSTRLEN];
      const void *ip = a->ai_family == AF_INET ? (const void *)&((struct sockaddr_in *)a->ai_addr)->sin_addr
                                               : (const void *)&((struct sockaddr_in6 *)a->ai_addr)->sin6_addr;
      if (inet_ntop(a->ai_family, ip, text, sizeof text)) {
        printf("%s%s", first ? "" : ",", text);
        first = 0;
      }
    }
    if (rc == 0) {
      printf("\t\n");
      freeaddrinfo(res);
    } else if (rc == EAI_NONAME) {
      printf("\tNOTFOUND\n");
    } else {
      printf("\t%s (%d)\n", gai_strerror(rc), rc);
    }
    fflush(stdout);
  }
  return 0;
}
