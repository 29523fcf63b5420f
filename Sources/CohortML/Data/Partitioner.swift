public import CohortCore
import Foundation

/// How unequal client sizes are: the scenario's `quantity_skew` partition, used as is.
/// `lognormal(sigma)`: sizes proportional to exp(σ·z), z ~ N(0, 1) (σ = 0 gives equal sizes).
/// `powerLaw(exponent)`: sizes proportional to Pareto draws with tail P(w > t) = t^−exponent
/// (t ≥ 1): the smaller the exponent, the heavier the tail.
public typealias QuantitySkew = PartitionPlan.QuantitySkewPlan

/// Ways to divide one dataset's examples among clients.
///
/// Every partitioner is deterministic given its stream, puts every example in exactly one client,
/// and lists each client's indices in increasing order (the order carries no information; a
/// trainer shuffles per epoch). Arguments that cannot work throw `.invalidConfiguration` naming
/// the value and what is accepted.
public enum Partitioner {
  /// Shuffles and deals near-equal parts: sizes differ by at most one.
  public static func iid(exampleCount: Int, clients: Int, rng: inout RandomStream) throws(CohortError)
    -> Partition
  {
    try requireClients(clients, examples: exampleCount, minimumSize: 1)
    let order = rng.permutation(exampleCount)
    let base = exampleCount / clients
    let extra = exampleCount % clients
    return deal(order, sizes: (0..<clients).map { base + ($0 < extra ? 1 : 0) })
  }

  /// Label skew by Dirichlet proportions (Hsu et al. 2019), as the common implementation
  /// (NIID-Bench, Li et al. 2021) does it: for each class, shuffle its examples and split them among
  /// the clients in proportions drawn from Dirichlet(α, …, α). Small α gives each client few
  /// classes; large α approaches IID.
  ///
  /// As in that implementation, a client that already holds its fair share (examples / clients)
  /// gets no more, which keeps sizes from drifting apart, and the whole draw is repeated while some
  /// client holds fewer than `minimumSize` examples. After 100 draws (or 20 in a row that do not
  /// come closer), the draw with the smallest shortfall is kept and repaired: each client still
  /// short takes random examples from the currently largest client. So no client ends below
  /// `minimumSize` whenever `clients × minimumSize ≤ examples`.
  public static func dirichlet(
    labels: [Int32], classes: Int, clients: Int, alpha: Double, minimumSize: Int = 1,
    rng: inout RandomStream
  ) throws(CohortError) -> Partition {
    guard alpha > 0 && alpha.isFinite else {
      throw CohortError(
        .invalidConfiguration, "Dirichlet alpha is \(alpha); expected a finite value > 0",
        fix: "use e.g. 0.1 for strong label skew, 100 for nearly IID")
    }
    guard minimumSize >= 0 else {
      throw CohortError(.invalidConfiguration, "minimumSize is \(minimumSize); expected ≥ 0")
    }
    try requireClients(clients, examples: labels.count, minimumSize: minimumSize)
    let byClass = try examplesByClass(labels, classes: classes)
    let n = labels.count
    let fairShare = Double(n) / Double(clients)
    let concentration = [Double](repeating: alpha, count: clients)

    var best: [[Int]] = []
    var bestShortfall = Int.max
    var sinceImprovement = 0
    // Where a draw meeting the minimum is merely unlikely, retrying finds one; where it is
    // practically impossible (thousands of clients, tiny α), stop once 20 draws in a row fail to
    // improve on the best and repair that one.
    for _ in 0..<100 where sinceImprovement < 20 {
      var assigned = [[Int]](repeating: [], count: clients)
      for var members in byClass where !members.isEmpty {
        rng.shuffle(&members)
        var p = rng.dirichlet(concentration)
        for j in 0..<clients where Double(assigned[j].count) >= fairShare { p[j] = 0 }
        var total = p.reduce(0, +)
        if !(total > 0) {
          // Every client that drew mass is full (possible when tiny α puts all mass on one):
          // spread this class evenly over the clients that are not.
          for j in 0..<clients { p[j] = Double(assigned[j].count) < fairShare ? 1 : 0 }
          total = p.reduce(0, +)
        }
        var cumulative = 0.0
        var start = 0
        for j in 0..<clients {
          cumulative += p[j] / total
          let end =
            j == clients - 1
            ? members.count
            : Swift.max(start, Swift.min(members.count, Int(cumulative * Double(members.count))))
          assigned[j].append(contentsOf: members[start..<end])
          start = end
        }
      }
      let shortfall = assigned.reduce(0) { $0 + Swift.max(0, minimumSize - $1.count) }
      if shortfall < bestShortfall {
        best = assigned
        bestShortfall = shortfall
        sinceImprovement = 0
      } else {
        sinceImprovement += 1
      }
      if shortfall == 0 { break }
    }
    if bestShortfall > 0 { repair(&best, minimumSize: minimumSize, rng: &rng) }
    return Partition(clients: best.map { $0.sorted() })
  }

  /// The pathological non-IID split of McMahan et al. (2017): sort the examples by label (ties
  /// by index), cut the sorted list into `clients × shardsPerClient` contiguous shards of
  /// near-equal size, and deal each client `shardsPerClient` shards at random. A client sees at
  /// most `shardsPerClient` labels, plus one more for each shard that straddles two labels.
  public static func shards(labels: [Int32], clients: Int, shardsPerClient: Int, rng: inout RandomStream)
    throws(CohortError) -> Partition
  {
    guard shardsPerClient >= 1 else {
      throw CohortError(.invalidConfiguration, "shardsPerClient is \(shardsPerClient); expected ≥ 1")
    }
    guard clients >= 1 else {
      throw CohortError(.invalidConfiguration, "clients is \(clients); expected ≥ 1")
    }
    let (shardCount, overflow) = clients.multipliedReportingOverflow(by: shardsPerClient)
    guard !overflow && shardCount <= labels.count else {
      throw CohortError(
        .invalidConfiguration,
        "\(clients) clients × \(shardsPerClient) shards per client needs at least that many examples; "
          + "the dataset has \(labels.count)",
        fix: "use fewer clients or fewer shards per client")
    }
    let n = labels.count
    let sorted = (0..<n).sorted { labels[$0] != labels[$1] ? labels[$0] < labels[$1] : $0 < $1 }
    let order = rng.permutation(shardCount)
    var result = [[Int]](repeating: [], count: clients)
    for c in 0..<clients {
      for t in 0..<shardsPerClient {
        let s = order[c * shardsPerClient + t]
        result[c].append(contentsOf: sorted[(s * n / shardCount)..<((s + 1) * n / shardCount)])
      }
      result[c].sort()
    }
    return Partition(clients: result)
  }

  /// IID contents with skewed sizes: client sizes follow `sizes`, each client holds at least one
  /// example, and the examples are shuffled before they are dealt.
  public static func quantitySkew(
    exampleCount: Int, clients: Int, sizes: QuantitySkew, rng: inout RandomStream
  ) throws(CohortError) -> Partition {
    try requireClients(clients, examples: exampleCount, minimumSize: 1)
    var logWeights: [Double]
    switch sizes {
    case .lognormal(let sigma):
      guard sigma >= 0 && sigma.isFinite else {
        throw CohortError(.invalidConfiguration, "lognormal sigma is \(sigma); expected a finite value ≥ 0")
      }
      logWeights = (0..<clients).map { _ in sigma * rng.normal() }
    case .powerLaw(let exponent):
      guard exponent > 0 && exponent.isFinite else {
        throw CohortError(
          .invalidConfiguration, "power-law exponent is \(exponent); expected a finite value > 0")
      }
      // Pareto by inversion: u^(−1/exponent), kept in log space.
      logWeights = (0..<clients).map { _ in -log(rng.uniformPositive()) / exponent }
    }
    // Work from log weights shifted by their maximum so that heavy tails cannot overflow; the
    // clamp keeps extreme parameters (σ near the largest Double) from producing ∞ − ∞.
    logWeights = logWeights.map { Swift.min(Swift.max($0, -1e300), 1e300) }
    let top = logWeights.max() ?? 0
    let weights = logWeights.map { exp($0 - top) }
    let total = weights.reduce(0, +)
    let spare = exampleCount - clients
    let quotas = weights.map { Double(spare) * $0 / total }
    var counts = quotas.map { Int($0.rounded(.down)) }
    // Largest remainders get the examples that flooring left over (ties to the lower index).
    let leftover = spare - counts.reduce(0, +)
    let byRemainder = (0..<clients).sorted {
      let a = quotas[$0] - Double(counts[$0])
      let b = quotas[$1] - Double(counts[$1])
      return a != b ? a > b : $0 < $1
    }
    for j in byRemainder.prefix(Swift.max(0, leftover)) { counts[j] += 1 }
    return deal(rng.permutation(exampleCount), sizes: counts.map { $0 + 1 })
  }

  /// The partition the data came with: client c holds the examples whose `clients` entry is c.
  /// There are `clientNames.count` clients when the dataset names them (some may be empty),
  /// otherwise the highest owner plus one.
  public static func natural(_ dataset: Dataset) throws(CohortError) -> Partition {
    guard let owners = dataset.clients else {
      throw CohortError(
        .invalidConfiguration,
        "the dataset has no client ownership, so it has no natural partition",
        fix: "load it with a client column (CSV) or from LEAF, or use the iid, dirichlet, shards or "
          + "quantity_skew partition")
    }
    let count = dataset.clientNames?.count ?? (Int(owners.max() ?? -1) + 1)
    var result = [[Int]](repeating: [], count: count)
    for (i, c) in owners.enumerated() {
      guard c >= 0 && Int(c) < count else {
        throw CohortError(
          .invalidData, "example \(i) is owned by client \(c); expected a client index in 0..<\(count)")
      }
      result[Int(c)].append(i)
    }
    return Partition(clients: result)
  }

  // MARK: Helpers

  private static func requireClients(_ clients: Int, examples: Int, minimumSize: Int) throws(CohortError) {
    guard clients >= 1 else {
      throw CohortError(.invalidConfiguration, "clients is \(clients); expected at least 1")
    }
    let (needed, overflow) = clients.multipliedReportingOverflow(by: minimumSize)
    guard !overflow && needed <= examples else {
      let message =
        minimumSize <= 1
        ? "clients is \(clients) but the dataset has \(examples) examples; expected at most one "
          + "client per example"
        : "clients is \(clients) with minimum size \(minimumSize), which needs \(clients) × "
          + "\(minimumSize) examples; the dataset has \(examples)"
      throw CohortError(
        .invalidConfiguration, message, fix: "use fewer clients or a smaller minimum size")
    }
  }

  private static func examplesByClass(_ labels: [Int32], classes: Int) throws(CohortError) -> [[Int]] {
    guard classes >= 1 else {
      throw CohortError(.invalidConfiguration, "classes is \(classes); expected at least 1")
    }
    var byClass = [[Int]](repeating: [], count: classes)
    for (i, y) in labels.enumerated() {
      guard y >= 0 && Int(y) < classes else {
        throw CohortError(
          .invalidConfiguration, "example \(i) has label \(y); expected labels in 0..<\(classes) (classes)")
      }
      byClass[Int(y)].append(i)
    }
    return byClass
  }

  /// Consecutive runs of `order` of the given sizes, each sorted.
  private static func deal(_ order: [Int], sizes: [Int]) -> Partition {
    var start = 0
    var result: [[Int]] = []
    result.reserveCapacity(sizes.count)
    for size in sizes {
      result.append(order[start..<(start + size)].sorted())
      start += size
    }
    return Partition(clients: result)
  }

  /// Moves random examples from the largest clients to those below `minimumSize`.
  private static func repair(_ assigned: inout [[Int]], minimumSize: Int, rng: inout RandomStream) {
    // A max-heap of the donors, the clients above the minimum, by size (ties: lower index first).
    // Receivers are below the minimum, so they are never in it, and donors only shrink: one
    // sift-down from the root after each move keeps it a heap.
    var heap = assigned.indices.filter { assigned[$0].count > minimumSize }
    func above(_ a: Int, _ b: Int) -> Bool {
      assigned[a].count != assigned[b].count ? assigned[a].count > assigned[b].count : a < b
    }
    func siftDown(_ start: Int) {
      var i = start
      while true {
        let l = 2 * i + 1
        let r = l + 1
        var top = i
        if l < heap.count && above(heap[l], heap[top]) { top = l }
        if r < heap.count && above(heap[r], heap[top]) { top = r }
        if top == i { return }
        heap.swapAt(i, top)
        i = top
      }
    }
    for i in stride(from: heap.count / 2 - 1, through: 0, by: -1) { siftDown(i) }
    for c in assigned.indices {
      while assigned[c].count < minimumSize {
        // The caller guarantees clients × minimumSize ≤ examples, so while anyone is short,
        // the largest client is above the minimum.
        guard let donor = heap.first, assigned[donor].count > minimumSize else { return }
        let k = rng.int(below: assigned[donor].count)
        assigned[donor].swapAt(k, assigned[donor].count - 1)
        assigned[c].append(assigned[donor].removeLast())
        siftDown(0)
      }
    }
  }
}
