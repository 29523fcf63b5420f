/// The simulator's discrete-event queue: events ordered by virtual time, and events at the same
/// time in the order they were pushed.
///
/// Breaking ties by insertion order (a sequence number, never by comparing events or by heap
/// position) makes a run's event order a function of its inputs alone, so the same scenario and
/// seed replay the same rounds bit for bit. A binary min-heap: push and pop cost O(log n), and
/// memory is proportional to the events pending, not to the population.
public struct EventQueue<Event> {
  @usableFromInline
  struct Entry {
    @usableFromInline var time: Double
    @usableFromInline var sequence: UInt64
    @usableFromInline var event: Event

    @inlinable
    init(time: Double, sequence: UInt64, event: Event) {
      self.time = time
      self.sequence = sequence
      self.event = event
    }

    @inlinable
    func precedes(_ other: Entry) -> Bool {
      time < other.time || (time == other.time && sequence < other.sequence)
    }
  }

  @usableFromInline var heap: [Entry] = []
  @usableFromInline var nextSequence: UInt64 = 0

  public init() {}

  /// Events waiting.
  public var count: Int { heap.count }
  public var isEmpty: Bool { heap.isEmpty }
  /// The time of the next event, without removing it.
  public var peekTime: Double? { heap.first?.time }

  /// Schedules `event` at virtual `time`. A NaN time would make the order meaningless, so it is
  /// refused; infinite times are allowed and come out last.
  @inlinable
  public mutating func push(_ event: Event, at time: Double) {
    precondition(!time.isNaN, "an event cannot be scheduled at time NaN")
    heap.append(Entry(time: time, sequence: nextSequence, event: event))
    nextSequence += 1
    siftUp(heap.count - 1)
  }

  /// Removes and returns the earliest event (the first pushed among equal times).
  @inlinable
  public mutating func pop() -> (time: Double, event: Event)? {
    guard !heap.isEmpty else { return nil }
    let last = heap.removeLast()
    guard !heap.isEmpty else { return (last.time, last.event) }
    let first = heap[0]
    heap[0] = last
    siftDown(0)
    return (first.time, first.event)
  }

  /// Drops every pending event; the sequence keeps counting so order stays insertion order.
  public mutating func removeAll() { heap.removeAll(keepingCapacity: true) }

  @inlinable
  mutating func siftUp(_ index: Int) {
    var child = index
    let entry = heap[child]
    while child > 0 {
      let parent = (child - 1) / 2
      guard entry.precedes(heap[parent]) else { break }
      heap[child] = heap[parent]
      child = parent
    }
    heap[child] = entry
  }

  @inlinable
  mutating func siftDown(_ index: Int) {
    var parent = index
    let entry = heap[parent]
    let n = heap.count
    while true {
      var child = 2 * parent + 1
      guard child < n else { break }
      if child + 1 < n && heap[child + 1].precedes(heap[child]) { child += 1 }
      guard heap[child].precedes(entry) else { break }
      heap[parent] = heap[child]
      parent = child
    }
    heap[parent] = entry
  }
}

extension EventQueue: Sendable where Event: Sendable {}
extension EventQueue.Entry: Sendable where Event: Sendable {}
