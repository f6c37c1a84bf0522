// CPU per small send on loopback TCP: one send() per socket, or one io_uring_enter that
// submits a SEND for every socket (what "many sends submitted together through io_uring"
// would save a gateway shard). A sender thread on CPU 0 writes one SIZE-byte message to each
// of NCONNS sockets per round, ROUNDS_PER_S rounds a second (0: as fast as it can); a
// receiver thread on CPU 1 reads everything with epoll. Prints each thread's CPU time per
// send. docs/benchmarks.md has the results.
//
//   apt-get install liburing-dev
//   cc -O2 -o /tmp/uring_send bench/probes/uring_send.c -luring -lpthread
//   /tmp/uring_send syscall|uring NCONNS ROUNDS_PER_S SECONDS SIZE
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <liburing.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int nconns, *srv, *cli;
static volatile int stop;
static double receiver_cpu;

static double thread_cpu(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static double since(const struct timespec *t0) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (now.tv_sec - t0->tv_sec) + (now.tv_nsec - t0->tv_nsec) / 1e9;
}

static void pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

static void *receiver(void *arg) {
    (void)arg;
    pin(1);
    int ep = epoll_create1(0);
    for (int i = 0; i < nconns; i++) {
        struct epoll_event e = {.events = EPOLLIN, .data.fd = cli[i]};
        epoll_ctl(ep, EPOLL_CTL_ADD, cli[i], &e);
    }
    static char buf[65536];
    struct epoll_event ev[512];
    double c0 = thread_cpu();
    while (!stop) {
        int k = epoll_wait(ep, ev, 512, 100);
        for (int i = 0; i < k; i++)
            while (recv(ev[i].data.fd, buf, sizeof buf, MSG_DONTWAIT) > 0) {
            }
    }
    receiver_cpu = thread_cpu() - c0;
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s syscall|uring NCONNS ROUNDS_PER_S SECONDS SIZE\n", argv[0]);
        return 2;
    }
    int uring = strcmp(argv[1], "uring") == 0;
    nconns = atoi(argv[2]);
    double rate = atof(argv[3]), seconds = atof(argv[4]);
    int size = atoi(argv[5]), one = 1;
    srv = calloc(nconns, sizeof(int));
    cli = calloc(nconns, sizeof(int));
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001)};
    socklen_t alen = sizeof a;
    if (bind(l, (void *)&a, sizeof a) || listen(l, 4096) || getsockname(l, (void *)&a, &alen)) {
        perror("listen");
        return 1;
    }
    for (int i = 0; i < nconns; i++) {
        cli[i] = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(cli[i], (void *)&a, sizeof a) || (srv[i] = accept(l, NULL, NULL)) < 0) {
            perror("connect");
            return 1;
        }
        setsockopt(srv[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        setsockopt(cli[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        fcntl(srv[i], F_SETFL, O_NONBLOCK);
    }
    struct io_uring ring;
    if (uring) {
        struct io_uring_params p = {.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN};
        if (io_uring_queue_init_params(2 * nconns, &ring, &p) < 0) {
            fprintf(stderr, "io_uring_queue_init failed\n");
            return 1;
        }
    }
    pthread_t th;
    pthread_create(&th, NULL, receiver, NULL);
    pin(0);
    char *msg = malloc(size);
    memset(msg, 'x', size);
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    double c0 = thread_cpu();
    long sends = 0, rounds = 0;
    while (since(&t0) < seconds) {
        if (rate > 0 && rounds / rate > since(&t0)) {
            double at = rounds / rate;
            struct timespec d = {t0.tv_sec + (long)at, t0.tv_nsec + (long)((at - (long)at) * 1e9)};
            if (d.tv_nsec >= 1000000000) {
                d.tv_sec++;
                d.tv_nsec -= 1000000000;
            }
            clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &d, NULL);
            continue;
        }
        if (!uring) {
            for (int i = 0; i < nconns; i++)
                sends += send(srv[i], msg, size, MSG_DONTWAIT) == size;
        } else {
            for (int i = 0; i < nconns; i++)
                io_uring_prep_send(io_uring_get_sqe(&ring), srv[i], msg, size, MSG_DONTWAIT);
            io_uring_submit_and_get_events(&ring);
            struct io_uring_cqe *cqe;
            unsigned head, seen = 0;
            io_uring_for_each_cqe(&ring, head, cqe) {
                sends += cqe->res == size;
                seen++;
            }
            io_uring_cq_advance(&ring, seen);
        }
        rounds++;
    }
    double sender_cpu = thread_cpu() - c0;
    stop = 1;
    pthread_join(th, NULL);
    printf("%s conns=%d rounds=%ld sends=%ld: sender %.2f us/send, receiver %.2f us/send\n", argv[1],
           nconns, rounds, sends, sender_cpu * 1e6 / sends, receiver_cpu * 1e6 / sends);
    return 0;
}
