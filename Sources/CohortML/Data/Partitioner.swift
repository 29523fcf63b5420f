public import CohortCore
import Foundation

/// How unequal client sizes are: the scenario's `quantity_skew` partition, used as is.
/// `lognormal(sigma)`: sizes proportional to exp(σ·z), z ~ N(0, 1) (σ = 0 gives equal sizes).
/// `powerLaw(exponent)`: sizes proportional to Pareto draws with tail P(w > t) = t^−exponent
/// (t ≥ 1): the smaller the exponent, the heavier the tail.
public typealias QuantitySkew = PartitionPlan.QuantitySkewPlan

/// How client sizes grow with the client's index: the scenario's size laws, used as is.
public typealias SizeLaw = PartitionPlan.SizeLaw

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
    try requireAlpha(alpha)
    guard minimumSize >= 0 else {
      throw CohortError(.invalidConfiguration, "minimumSize is \(minimumSize); expected ≥ 0")
    }
    try requireClients(clients, examples: labels.count, minimumSize: minimumSize)
    let byClass = try examplesByClass(labels, classes: classes)
    var best: [[Int]] = []
    var bestShortfall = Int.max
    var sinceImprovement = 0
    // Where a draw meeting the minimum is merely unlikely, retrying finds one; where it is
    // practically impossible (thousands of clients, tiny α), stop once 20 draws in a row fail to
    // improve on the best and repair that one.
    for _ in 0..<100 where sinceImprovement < 20 {
      let assigned = dirichletDraw(byClass, clients: clients, alpha: alpha, rng: &rng)
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

  /// What to do when a Dirichlet draw leaves a client below the minimum size.
  public typealias SmallClients = PartitionPlan.DirichletMinimum.OnSmall

  /// Dirichlet label skew with an explicit minimum client size (the scenario's `min_size`), as
  /// Flower's `DirichletPartitioner(min_partition_size:)` offers it.
  ///
  /// - `.redraw`: the whole draw is repeated until every client holds at least `minimumSize`
  ///   examples; after `attempts` draws that all fall short it throws, naming the minimum and α.
  /// - `.balance`: one draw, then each client still short takes random examples from the
  ///   currently largest client until it has `minimumSize`.
  ///
  /// Each draw is the same as `dirichlet(labels:classes:clients:alpha:minimumSize:rng:)`'s.
  public static func dirichlet(
    labels: [Int32], classes: Int, clients: Int, alpha: Double, minimumSize: Int, onSmall: SmallClients,
    attempts: Int = 100, rng: inout RandomStream
  ) throws(CohortError) -> Partition {
    try requireAlpha(alpha)
    guard minimumSize >= 1 else {
      throw CohortError(.invalidConfiguration, "min_size is \(minimumSize); expected ≥ 1")
    }
    try requireClients(clients, examples: labels.count, minimumSize: minimumSize)
    let byClass = try examplesByClass(labels, classes: classes)
    switch onSmall {
    case .balance:
      var assigned = dirichletDraw(byClass, clients: clients, alpha: alpha, rng: &rng)
      repair(&assigned, minimumSize: minimumSize, rng: &rng)
      return Partition(clients: assigned.map { $0.sorted() })
    case .redraw:
      var smallest = 0
      for _ in 0..<Swift.max(1, attempts) {
        let assigned = dirichletDraw(byClass, clients: clients, alpha: alpha, rng: &rng)
        smallest = assigned.map(\.count).min() ?? 0
        if smallest >= minimumSize { return Partition(clients: assigned.map { $0.sorted() }) }
      }
      throw CohortError(
        .invalidConfiguration,
        "partition.min_size is \(minimumSize), but \(Swift.max(1, attempts)) Dirichlet draws with alpha "
          + "\(alpha) over \(clients) devices all left a device smaller (the last one's smallest held "
          + "\(smallest) examples)",
        fix: "lower partition.min_size, raise partition.alpha, use fewer devices, or set on_small: balance")
    }
  }

  /// One Dirichlet draw: for each class, its examples shuffled and split among the clients in
  /// proportions from Dirichlet(α, …, α), a client that already holds its fair share
  /// (examples / clients) taking no more. Indices are unsorted.
  private static func dirichletDraw(
    _ byClass: [[Int]], clients: Int, alpha: Double, rng: inout RandomStream
  ) -> [[Int]] {
    let n = byClass.reduce(0) { $0 + $1.count }
    let fairShare = Double(n) / Double(clients)
    let concentration = [Double](repeating: alpha, count: clients)
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
    return assigned
  }

  /// Flower's `PathologicalPartitioner`: every client holds examples of exactly
  /// `classesPerClient` classes. Classes are dealt to clients from a deck of shuffled copies of
  /// the classes present (a client skips a class it already has), so every class is held by some
  /// client and the classes are held about equally often; each class's examples are then
  /// shuffled and split as evenly as possible among the clients that hold it.
  ///
  /// Throws when that cannot hold: more classes per client than classes present, fewer
  /// `clients × classesPerClient` slots than classes present (some examples would belong to no
  /// client), or a class with fewer examples than clients holding it.
  public static func pathological(
    labels: [Int32], classes: Int, clients: Int, classesPerClient: Int, rng: inout RandomStream
  ) throws(CohortError) -> Partition {
    try requireClients(clients, examples: labels.count, minimumSize: 1)
    let byClass = try examplesByClass(labels, classes: classes)
    let present = byClass.indices.filter { !byClass[$0].isEmpty }
    guard classesPerClient >= 1 && classesPerClient <= present.count else {
      throw CohortError(
        .invalidConfiguration,
        "partition.classes_per_device is \(classesPerClient); the data has \(present.count) classes "
          + "with examples, so expected 1…\(present.count)",
        fix: "set classes_per_device to at most \(present.count)")
    }
    let (slots, overflow) = clients.multipliedReportingOverflow(by: classesPerClient)
    guard !overflow && slots >= present.count else {
      throw CohortError(
        .invalidConfiguration,
        "partition.classes_per_device (\(classesPerClient)) × \(clients) devices gives \(slots) class "
          + "slots for \(present.count) classes, so the examples of some class would belong to no device",
        fix: "raise classes_per_device or the number of devices to at least \(present.count) slots")
    }
    var deck: [Int] = []
    var holders = [[Int]](repeating: [], count: classes)
    for c in 0..<clients {
      var chosen: [Int] = []
      while chosen.count < classesPerClient {
        if let k = deck.firstIndex(where: { !chosen.contains($0) }) {
          chosen.append(deck.remove(at: k))
        } else {
          // Every class left in the deck is one this client has: add a fresh shuffled copy.
          var copy = present
          rng.shuffle(&copy)
          deck.append(contentsOf: copy)
        }
      }
      for k in chosen { holders[k].append(c) }
    }
    var result = [[Int]](repeating: [], count: clients)
    for k in present {
      var members = byClass[k]
      let owners = holders[k]
      // The deck's first copy is used up before any class is dealt twice to one client, and
      // there are at least as many slots as classes; this only guards that reasoning.
      guard !owners.isEmpty else {
        throw CohortError(
          .invalidConfiguration, "pathological partition: class \(k) was dealt to no device; this is a bug")
      }
      guard members.count >= owners.count else {
        throw CohortError(
          .invalidConfiguration,
          "class \(k) has \(members.count) examples but \(owners.count) devices hold it "
            + "(partition.classes_per_device \(classesPerClient)), so some device would get none",
          fix: "lower classes_per_device or the number of devices")
      }
      rng.shuffle(&members)
      for (j, owner) in owners.enumerated() {
        let range = (j * members.count / owners.count)..<((j + 1) * members.count / owners.count)
        result[owner].append(contentsOf: members[range])
      }
    }
    return Partition(clients: result.map { $0.sorted() })
  }

  /// Client sizes that follow a size law: client i gets a share proportional to its weight
  /// (1 for `equal`, i + 1 for `linear`, (i + 1)² for `square`, eⁱ for `exponential`, as
  /// Flower's Linear-, Square- and ExponentialPartitioner), floored, with the examples left over
  /// going to the largest remainders (ties to the lower index). The sizes sum to `exampleCount`
  /// and each is within one of its exact share. Throws when some client would get no example.
  public static func sizes(exampleCount: Int, clients: Int, law: SizeLaw) throws(CohortError) -> [Int] {
    try requireClients(clients, examples: exampleCount, minimumSize: 1)
    let weights: [Double] = (0..<clients).map { i in
      switch law {
      case .equal: return 1
      case .linear: return Double(i + 1)
      case .square: return Double(i + 1) * Double(i + 1)
      // Relative to the largest, so thousands of clients cannot overflow.
      case .exponential: return exp(Double(i - (clients - 1)))
      }
    }
    let total = weights.reduce(0, +)
    let quotas = weights.map { Double(exampleCount) * $0 / total }
    var counts = quotas.map { Int($0.rounded(.down)) }
    let leftover = exampleCount - counts.reduce(0, +)
    let byRemainder = (0..<clients).sorted {
      let a = quotas[$0] - Double(counts[$0])
      let b = quotas[$1] - Double(counts[$1])
      return a != b ? a > b : $0 < $1
    }
    for j in byRemainder.prefix(Swift.max(0, leftover)) { counts[j] += 1 }
    if let empty = counts.firstIndex(of: 0) {
      throw CohortError(
        .invalidConfiguration,
        "\(law.rawValue) sizes over \(clients) devices and \(exampleCount) examples leave device \(empty) "
          + "with no example",
        fix: law == .exponential
          ? "use at most about ln(examples) devices with exponential sizes, or linear or square"
          : "use fewer devices" + (law == .square ? ", or linear sizes" : ""))
    }
    return counts
  }

  /// IID contents with sizes from a size law (Flower's Linear-, Square- and
  /// ExponentialPartitioner): the examples are shuffled and dealt in `sizes(…)`.
  public static func sized(exampleCount: Int, clients: Int, law: SizeLaw, rng: inout RandomStream)
    throws(CohortError) -> Partition
  {
    let counts = try sizes(exampleCount: exampleCount, clients: clients, law: law)
    return deal(rng.permutation(exampleCount), sizes: counts)
  }

  /// Flower's `InnerDirichletPartitioner`: client sizes from a size law, and each client's class
  /// mix drawn from Dirichlet(α) over the classes. Clients are filled one after another in a
  /// random order; each of a client's examples is of a class drawn from its mix, restricted to
  /// the classes that still have examples, and is taken at random from what remains of that
  /// class. Sizes are exact; only the last clients' mixes bend when classes run out.
  public static func innerDirichlet(
    labels: [Int32], classes: Int, clients: Int, alpha: Double, law: SizeLaw, rng: inout RandomStream
  ) throws(CohortError) -> Partition {
    try requireAlpha(alpha)
    let counts = try sizes(exampleCount: labels.count, clients: clients, law: law)
    var remaining = try examplesByClass(labels, classes: classes)
    for k in remaining.indices { rng.shuffle(&remaining[k]) }
    let concentration = [Double](repeating: alpha, count: classes)
    let mixes = (0..<clients).map { _ in rng.dirichlet(concentration) }
    var result = [[Int]](repeating: [], count: clients)
    for c in rng.permutation(clients) {
      var weights = mixes[c]
      for k in 0..<classes where remaining[k].isEmpty { weights[k] = 0 }
      result[c].reserveCapacity(counts[c])
      for _ in 0..<counts[c] {
        if !(weights.reduce(0, +) > 0) {
          // The client's classes are used up: what remains, uniformly by class.
          for k in 0..<classes { weights[k] = remaining[k].isEmpty ? 0 : 1 }
        }
        let k = rng.categorical(weights)
        // The class lists were shuffled, so the last is a random one of those left.
        result[c].append(remaining[k].removeLast())
        if remaining[k].isEmpty { weights[k] = 0 }
      }
    }
    return Partition(clients: result.map { $0.sorted() })
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

  private static func requireAlpha(_ alpha: Double) throws(CohortError) {
    guard alpha > 0 && alpha.isFinite else {
      throw CohortError(
        .invalidConfiguration, "Dirichlet alpha is \(alpha); expected a finite value > 0",
        fix: "use e.g. 0.1 for strong label skew, 100 for nearly IID")
    }
  }

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
