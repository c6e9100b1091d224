/* A simulated host's monotonic clocks, for check F7 (tests/fleet/bed.py, HostClock).

   Preloaded before libfaketime, which runs with FAKETIME_DONT_FAKE_MONOTONIC=1 and fakes
   only the wall clock (and the relative timeouts of sleeps and polls, at its rate). This
   library fakes CLOCK_MONOTONIC and CLOCK_BOOTTIME (and their coarse and raw kinds) at
   the rate of FAKETIME's "x" modifier (1 without one), anchored at WGFLEET_CLOCK_ANCHOR
   (real CLOCK_BOOTTIME seconds, the same for every process of the host):

       faked = anchor + rate * (real - anchor)

   so the guard, its leashes and their workers read one clock, close to the real one
   (never libfaketime's, which is based on the wall clock: seconds since 1970). With the
   anchor missing the rate is 1: the monotonic clocks are real. It also turns absolute
   timeouts on those clocks back into real ones where libfaketime 0.9.10 (Debian 12)
   does not or gets it wrong:

   - clock_nanosleep(TIMER_ABSTIME) on a monotonic clock (Python's time.sleep): 0.9.10
     subtracts the faked wall clock from it and fails with EINVAL when it does not fake
     the monotonic clock;
   - sem_clockwait (every timed wait of Python's threading): 0.9.10 does not wrap it
     (0.9.11 does), so a deadline on a faked clock was passed on unchanged.

   Stdlib C, built by the bed with cc. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <semaphore.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static double rate = 1.0, anchor = 0.0;
static int ready = 0;

static void setup(void) {
  if (ready) return;
  const char *at = getenv("WGFLEET_CLOCK_ANCHOR");
  const char *spec = getenv("FAKETIME");
  const char *x = spec == NULL ? NULL : strchr(spec, 'x');
  if (at != NULL && x != NULL && atof(x + 1) > 0) {
    rate = atof(x + 1);
    anchor = atof(at);
  }
  ready = 1;
}

static int monotonic(clockid_t clock) {
  return clock == CLOCK_MONOTONIC || clock == CLOCK_MONOTONIC_COARSE
      || clock == CLOCK_MONOTONIC_RAW || clock == CLOCK_BOOTTIME;
}

static double seconds(const struct timespec *ts) {
  return (double)ts->tv_sec + ts->tv_nsec / 1e9;
}

static struct timespec timespec(double s) {
  struct timespec ts;
  if (s < 0) s = 0;
  ts.tv_sec = (time_t)s;
  ts.tv_nsec = (long)((s - (double)ts.tv_sec) * 1e9);
  if (ts.tv_nsec >= 1000000000L) { ts.tv_sec += 1; ts.tv_nsec -= 1000000000L; }
  if (ts.tv_nsec < 0) ts.tv_nsec = 0;
  return ts;
}

/* a reading of this host's clock to the real one */
static double real_of(double faked) { return anchor + (faked - anchor) / rate; }

int clock_gettime(clockid_t clock, struct timespec *tp) {
  static int (*next)(clockid_t, struct timespec *) = NULL;
  setup();
  if (monotonic(clock)) {
    struct timespec real;
    if (syscall(SYS_clock_gettime, clock, &real) != 0) return -1;
    if (rate == 1.0) { *tp = real; return 0; }
    *tp = timespec(anchor + rate * (seconds(&real) - anchor));
    return 0;
  }
  if (next == NULL) next = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
  return next(clock, tp);
}

int clock_nanosleep(clockid_t clock, int flags, const struct timespec *req, struct timespec *rem) {
  static int (*next)(clockid_t, int, const struct timespec *, struct timespec *) = NULL;
  setup();
  if (monotonic(clock) && req != NULL) {
    struct timespec real = (flags & TIMER_ABSTIME) ? timespec(real_of(seconds(req)))
                                                   : timespec(seconds(req) / rate);
    long result = syscall(SYS_clock_nanosleep, clock, flags, &real, rem);
    if (result == 0) return 0;
    return errno;  /* clock_nanosleep returns the error, it does not set errno */
  }
  if (next == NULL)
    next = (int (*)(clockid_t, int, const struct timespec *, struct timespec *))dlsym(RTLD_NEXT, "clock_nanosleep");
  return next(clock, flags, req, rem);
}

int sem_clockwait(sem_t *sem, clockid_t clock, const struct timespec *abstime) {
  static int (*next)(sem_t *, clockid_t, const struct timespec *) = NULL;
  setup();
  if (next == NULL) next = (int (*)(sem_t *, clockid_t, const struct timespec *))dlsym(RTLD_NEXT, "sem_clockwait");
  if (next == NULL) { errno = ENOSYS; return -1; }
  if (monotonic(clock) && rate != 1.0) {
    struct timespec real = timespec(real_of(seconds(abstime)));
    return next(sem, clock, &real);
  }
  return next(sem, clock, abstime);
}
