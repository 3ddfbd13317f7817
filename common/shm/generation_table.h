// File: common/shm/generation_table.h
//
// Page generations: one 64-bit counter per page of a pool, in memory that readers in other processes map (a
// shared-memory segment of its own, or UCX-registered memory). A reader that copies a page run without holding any
// lock on it uses the counters as a seqlock to learn, after the fact, whether the run may have been rewritten while
// it copied.
//
// Invariants (the writer's side, kept by the KV store, services/kvstore/session_store.h "Pins and generations"):
//   I1. A run that a reader has been told about (with its generation g, read from its first page) is not freed,
//       and its rows that held tokens are not written, while the lease it was resolved under lives.
//   I2. Before such a run can be freed or rewritten (the last lease that resolved it ends), the generation of every
//       page of the run is incremented, and that increment happens-before any later write to those pages (the
//       increment precedes, in program order, the release of the run's pin, whose pool mutex the next owner of the
//       pages acquires before writing them).
//   So a reader that sees generation g at its first page after its copy, with an acquire fence between its copy's
//   loads and that load, read no byte written after the increment: the copy is exactly the run's content as
//   resolved. A reader that sees anything else discards the copy (ABORTED).
//
// The reader's protocol (ShmKvChannel; UcxKvChannel does the same with RMA gets issued after the data gets
// complete):
//   if (Load(gen) != g) abort;         // cheap early exit: the lease already ended
//   memcpy(dst, run, bytes);
//   ReaderFence();                     // orders the copy's loads before the next load
//   if (LoadRelaxed(gen) != g) abort;  // the run was (or is being) reused: the copy may be stale or torn
// Generations only grow; 2^64 increments do not wrap in practice.
//
// The words are plain uint64_t accessed with the GCC/Clang __atomic builtins (lock-free and address-free for 8-byte
// aligned words on every supported target), which is what makes them usable across processes; C++17 has no
// std::atomic_ref.
#ifndef LIVEKV_COMMON_SHM_GENERATION_TABLE_H_
#define LIVEKV_COMMON_SHM_GENERATION_TABLE_H_

#include <cstddef>
#include <cstdint>

namespace livekv {

static_assert(__atomic_always_lock_free(sizeof(uint64_t), 0), "page generations need lock-free 64-bit atomics");

// Bytes of a table of `pages` generations.
inline size_t GenerationTableBytes(uint32_t pages) { return static_cast<size_t>(pages) * sizeof(uint64_t); }

inline uint64_t LoadGeneration(const uint64_t* word) { return __atomic_load_n(word, __ATOMIC_ACQUIRE); }
inline uint64_t LoadGenerationRelaxed(const uint64_t* word) { return __atomic_load_n(word, __ATOMIC_RELAXED); }

// The reader's fence between its copy and the second generation load.
inline void GenerationReaderFence() { __atomic_thread_fence(__ATOMIC_ACQUIRE); }

// The writer's increment of pages [first, first + count) of `table` (I2). The trailing fence is belt and braces:
// I2 already gets its ordering from the pool mutex released after it.
inline void BumpGenerations(uint64_t* table, uint32_t first, uint32_t count) {
  for (uint32_t p = first; p < first + count; ++p) __atomic_fetch_add(&table[p], 1, __ATOMIC_RELEASE);
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
}

}  // namespace livekv

#endif  // LIVEKV_COMMON_SHM_GENERATION_TABLE_H_
