#if os(Linux)
  // glibc's <malloc.h> is not in Swift's Glibc module: the two functions, by their C names.
  @_silgen_name("mallopt") private func mallopt(_ parameter: Int32, _ value: Int32) -> Int32
  @_silgen_name("malloc_trim") private func mallocTrim(_ pad: Int) -> Int32
  /// `M_ARENA_MAX` and `M_MMAP_THRESHOLD` of <malloc.h>.
  private let mArenaMax: Int32 = -8
  private let mMmapThreshold: Int32 = -3
#endif

/// Gives memory a server freed back to the system. glibc keeps freed memory in per-thread
/// arenas: after a load of ten thousand sessions ends, a server would keep the resident set the
/// load left (measured: 1.4 GB for 10,000 sessions, with every connection closed). Fewer arenas
/// and a periodic `malloc_trim` return it.
public enum ProcessMemory {
  /// At most two malloc arenas (the event loops and the coordinator share them), and blocks of
  /// 128 KiB or more in their own mappings, returned whole when freed: glibc otherwise raises
  /// that threshold to the largest block freed, and a load's big tables then land in the heap
  /// between small blocks that outlive them. Call before the threads start.
  public static func limitArenas() {
    #if os(Linux)
      _ = mallopt(mArenaMax, 2)
      _ = mallopt(mMmapThreshold, 128 * 1024)
    #endif
  }

  /// Returns freed memory to the system every `seconds` until cancelled.
  public static func trimPeriodically(every seconds: Int = 15) -> Task<Void, Never> {
    Task.detached(priority: .background) {
      while !Task.isCancelled {
        try? await Task.sleep(for: .seconds(seconds))
        #if os(Linux)
          _ = mallocTrim(0)
        #endif
      }
    }
  }
}
