import CohortCore
import Testing

@testable import CohortSimulator

@Suite struct EventQueueTests {
  @Test func popsInTimeOrder() {
    var queue = EventQueue<String>()
    #expect(queue.isEmpty && queue.peekTime == nil && queue.pop() == nil)
    for (time, name) in [(5.0, "e"), (1, "a"), (3, "c"), (.infinity, "last"), (2, "b"), (4, "d")] {
      queue.push(name, at: time)
    }
    #expect(queue.count == 6 && queue.peekTime == 1)
    var names: [String] = []
    while let next = queue.pop() { names.append(next.event) }
    #expect(names == ["a", "b", "c", "d", "e", "last"])
    #expect(queue.isEmpty)
  }

  @Test func equalTimesComeOutInInsertionOrder() {
    var queue = EventQueue<Int>()
    // Interleave a tie group with other times so the heap reorders around it.
    for i in 0..<50 {
      queue.push(i, at: 7)
      queue.push(1000 + i, at: Double(50 - i) + 0.5)
    }
    var ties: [Int] = []
    while let next = queue.pop() {
      if next.time == 7 { ties.append(next.event) }
    }
    #expect(ties == Array(0..<50))
  }

  @Test func matchesASortedReferenceOverRandomPushesAndPops() {
    let seed: UInt64 = 20_260_101
    var rng = RandomStream(seed: seed, purpose: "event-queue-test")
    var queue = EventQueue<Int>()
    // The reference: (time, sequence, event) sorted descending, so the next event is last.
    var reference: [(time: Double, sequence: Int, event: Int)] = []
    var sequence = 0
    var mismatches = 0
    for step in 0..<100_000 {
      if reference.isEmpty || rng.uniform() < 0.5 {
        // Few distinct times, so ties are common.
        let time = Double(rng.int(below: 200)) * 0.5
        let entry = (time: time, sequence: sequence, event: step)
        sequence += 1
        queue.push(step, at: time)
        // Insert keeping descending (time, sequence) order.
        var low = 0
        var high = reference.count
        while low < high {
          let mid = (low + high) / 2
          let m = reference[mid]
          if m.time > time || (m.time == time && m.sequence > entry.sequence) {
            low = mid + 1
          } else {
            high = mid
          }
        }
        reference.insert(entry, at: low)
      } else {
        let expected = reference.removeLast()
        let got = queue.pop()
        if got?.time != expected.time || got?.event != expected.event { mismatches += 1 }
      }
      if queue.count != reference.count { mismatches += 1 }
    }
    while let expected = reference.popLast() {
      let got = queue.pop()
      if got?.time != expected.time || got?.event != expected.event { mismatches += 1 }
    }
    #expect(mismatches == 0, "seed \(seed)")
    #expect(queue.isEmpty)
  }

  @Test func removeAllKeepsInsertionOrderAfterwards() {
    var queue = EventQueue<Int>()
    queue.push(1, at: 1)
    queue.removeAll()
    #expect(queue.isEmpty)
    queue.push(2, at: 3)
    queue.push(3, at: 3)
    #expect(queue.pop()?.event == 2 && queue.pop()?.event == 3)
  }
}
