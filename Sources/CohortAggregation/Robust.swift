import CohortCore

/// Byzantine-robust aggregation over individual updates. All arithmetic in Double; ties are
/// broken by arrival order (the lower index wins) so results are deterministic.
enum Robust {
  /// Plain mean, or nil for no updates.
  static func mean(_ updates: [Weights]) -> [Double]? {
    guard let first = updates.first else { return nil }
    var sum = [Double](repeating: 0, count: first.count)
    for u in updates {
      u.values.withUnsafeBufferPointer { x in
        for i in 0..<sum.count { sum[i] += Double(x[i]) }
      }
    }
    let inv = 1 / Double(updates.count)
    return sum.map { $0 * inv }
  }

  /// Calls `body` with each coordinate's values across the updates, sorted ascending.
  private static func columns(_ updates: [Weights], _ body: (Int, [Double]) -> Double) -> [Double]? {
    guard let first = updates.first else { return nil }
    var column = [Double](repeating: 0, count: updates.count)
    var out = [Double](repeating: 0, count: first.count)
    for i in 0..<first.count {
      for k in 0..<updates.count { column[k] = Double(updates[k].values[i]) }
      column.sort()
      out[i] = body(i, column)
    }
    return out
  }

  private static func medianOfSorted(_ c: [Double]) -> Double {
    let n = c.count
    return n % 2 == 1 ? c[n / 2] : (c[n / 2 - 1] + c[n / 2]) / 2
  }

  /// Coordinate-wise median (the mean of the two middle values for an even count).
  static func median(_ updates: [Weights]) -> [Double]? {
    columns(updates) { _, c in medianOfSorted(c) }
  }

  /// Coordinate-wise trimmed mean: drop ⌊β·n⌋ values from each end, average the rest. β < 0.5
  /// leaves at least one value.
  static func trimmedMean(_ updates: [Weights], beta: Double) -> [Double]? {
    let n = updates.count
    let cut = Int((beta * Double(n)).rounded(.down))
    precondition(2 * cut < n, "trimmed mean would cut every value")
    return columns(updates) { _, c in
      var s = 0.0
      for j in cut..<(n - cut) { s += c[j] }
      return s / Double(n - 2 * cut)
    }
  }

  /// Squared Euclidean distances between every pair of updates, in Double.
  static func squaredDistances(_ updates: [Weights]) -> [[Double]] {
    let n = updates.count
    var d = [[Double]](repeating: [Double](repeating: 0, count: n), count: n)
    for a in 0..<n {
      for b in (a + 1)..<max(a + 1, n) {
        var s = 0.0
        updates[a].values.withUnsafeBufferPointer { x in
          updates[b].values.withUnsafeBufferPointer { y in
            for i in 0..<x.count {
              let t = Double(x[i]) - Double(y[i])
              s += t * t
            }
          }
        }
        d[a][b] = s
        d[b][a] = s
      }
    }
    return d
  }

  /// Krum scores (Blanchard et al. 2017): for each update among `candidates`, the sum of its
  /// squared distances to its n − f − 2 nearest other candidates. When a round has too few
  /// updates for that (n < f + 3), the nearest one counts, so the rule still picks the most
  /// central update.
  static func krumScores(_ distances: [[Double]], candidates: [Int], byzantine f: Int) -> [Double] {
    let n = candidates.count
    let neighbours = min(n - 1, max(1, n - f - 2))
    return candidates.map { i in
      let others = candidates.filter { $0 != i }.map { distances[i][$0] }.sorted()
      return others.prefix(neighbours).reduce(0, +)
    }
  }

  /// Indices of the `keep` lowest-scoring updates (Krum: keep 1; Multi-Krum: keep m, default
  /// n − f), in score order. When a round has fewer updates than the plan assumed, f shrinks to
  /// what n supports (n ≥ 2f + 3), and `keep` to n.
  static func krumSelect(_ updates: [Weights], byzantine f: Int, keep: Int?) -> [Int] {
    let n = updates.count
    guard n > 0 else { return [] }
    let fEff = min(f, max(0, (n - 3) / 2))
    let m = min(n, max(1, keep ?? (n - fEff)))
    let scores = krumScores(squaredDistances(updates), candidates: Array(0..<n), byzantine: fEff)
    let order = (0..<n).sorted { scores[$0] < scores[$1] || (scores[$0] == scores[$1] && $0 < $1) }
    return Array(order.prefix(m))
  }

  /// Bulyan (El Mhamdi, Guerraoui, Rouault 2018, Algorithm 1): choose θ = n − 2f updates by
  /// repeatedly taking the Krum winner of those left; then per coordinate, average the
  /// β = θ − 2f chosen values closest to the chosen values' median. Needs n ≥ 4f + 3; with fewer
  /// updates f shrinks to what n supports.
  static func bulyan(_ updates: [Weights], byzantine f: Int) -> [Double]? {
    let n = updates.count
    guard n > 0 else { return nil }
    let fEff = min(f, max(0, (n - 3) / 4))
    let theta = n - 2 * fEff
    let beta = theta - 2 * fEff
    let distances = squaredDistances(updates)
    var remaining = Array(0..<n)
    var selected: [Int] = []
    while selected.count < theta {
      let scores = krumScores(distances, candidates: remaining, byzantine: fEff)
      var best = 0
      for j in 1..<max(1, remaining.count) where scores[j] < scores[best] { best = j }
      selected.append(remaining.remove(at: best))
    }
    let chosen = selected.map { updates[$0] }
    return columns(chosen) { _, c in
      let med = medianOfSorted(c)
      // Stable by position in the sorted column, so ties are deterministic.
      let closest = c.indices.sorted {
        let da = abs(c[$0] - med)
        let db = abs(c[$1] - med)
        return da < db || (da == db && $0 < $1)
      }
      return closest.prefix(beta).reduce(0) { $0 + c[$1] } / Double(beta)
    }
  }
}
