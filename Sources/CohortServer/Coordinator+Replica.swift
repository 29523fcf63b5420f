public import CohortAggregation
import CohortCore
import CohortProtocol
import Foundation

/// A coordinator that is one replica of a run (`Configuration.replica`): it closes each round
/// with its own devices, stores its contribution, and either leads the round (combines every
/// replica's contribution, steps the strategy, commits under its fencing token) or takes the
/// leader's decision from the store.
extension Coordinator {
  /// The rounds gathering and training here, for the replica's look at the shared cohort.
  public var replicaRounds: (selecting: Int?, reporting: Int?) {
    (pipeline.selectingRound, pipeline.reportingRound)
  }

  /// The other replicas filled `round`'s cohort.
  public func cohortFilledElsewhere(round: Int) async {
    await perform(pipeline.cohortFilledElsewhere(round: round, now: clock.now))
  }

  /// The replicas together met `round`'s goal of reports.
  public func goalMetElsewhere(round: Int) async {
    await perform(pipeline.goalMetElsewhere(round: round, now: clock.now))
  }

  /// Check-ins per second arriving here, and the other replicas', for pace steering.
  public var checkInRate: Double { pipeline.checkInRate(now: clock.now) }
  public func setOtherCheckInRate(_ rate: Double) { pipeline.setOtherCheckInRate(rate) }

  /// A replica joining a run takes the strategy state of its last committed round.
  public func resumeStrategy(_ state: StrategyState) async {
    strategyState = state
    await aggregator.adopt(state)
  }

  func aggregateAsReplica(round: Int, link: ReplicaLink) async {
    let secure = await configuration.secureAggregation?.secureSum(
      round: round, devices: pipeline.reported(round: round))
    let partial = await aggregator.partial(round: round, last: takeBatch())
    let mine = ReplicaContribution(aggregate: partial, tally: pipeline.tally(round: round), secure: secure)
    await link.contribute(round: round, mine)
    while let decision = await link.decide(round: round) {
      switch decision {
      case .decided(let record, let model, let state):
        await follow(round: round, record: record, model: model, state: state)
        return
      case .lead(let stored):
        if await lead(round: round, stored: stored, mine: mine, link: link) { return }
      }
    }
  }

  /// Takes the round as another replica decided it.
  private func follow(round: Int, record: RoundRecord, model: Weights?, state: Data?) async {
    let committed = record.outcome == .committed && model != nil
    if committed, let model {
      adoptGlobal(model, round: round)
      if let state {
        var r = SnapshotReader([UInt8](state))
        if let s = try? StrategyState(restoring: &r) {
          strategyState = s
          await aggregator.adopt(s)
        }
      }
    }
    let (_, actions) = pipeline.aggregated(
      round: round, RoundPipeline.Aggregation(producedModel: committed), now: clock.now)
    logger.info(
      "round \(committed ? "committed" : "abandoned") by the leader", metadata: ["round": "\(round)"])
    metrics.written(record)
    for observer in roundObservers { observer(record) }
    if committed { await perform(pipeline.committed(round: round, now: clock.now)) }
    await perform(actions)
  }

  /// Leads the round: combines every contribution, steps the strategy and commits. False when
  /// another replica took the lease meanwhile (its decision is to be waited for).
  private func lead(round: Int, stored: [String: Data], mine: ReplicaContribution, link: ReplicaLink) async
    -> Bool
  {
    let me = link.configuration.replica
    var contributions: [ReplicaContribution] = []
    for name in Set(stored.keys).union([me]).sorted() {
      if name == me {
        contributions.append(mine)
        continue
      }
      do throws(CohortError) {
        contributions.append(try ReplicaContribution(decoding: stored[name]!, strategy: aggregator.strategy))
      } catch {
        logger.error(
          "a replica's contribution is unreadable; the round goes on without it",
          metadata: ["round": "\(round)", "replica": "\(name)", "error": "\(error.message)"])
      }
    }
    let combined = ReplicaContribution.combine(contributions, strategy: aggregator.strategy)
    pipeline.adopt(combined.tally, round: round)
    var secure: SecureSum?
    if let driver = configuration.secureAggregation {
      let decoded: (weightedSum: [Double], totalWeight: Double)? =
        if let ring = combined.ringSum {
          await driver.decode(ringSum: ring, devices: combined.ringDevices.count, round: round)
        } else { nil }
      secure = SecureSum(
        weightedSum: decoded?.weightedSum, totalWeight: decoded?.totalWeight ?? 0,
        survivors: decoded == nil ? [] : combined.ringDevices, examples: combined.ringExamples,
        failure: decoded != nil
          ? nil : combined.secureFailures.first ?? "no replica's secure aggregation gave a sum",
        steps: combined.secureSteps, rejectedMessages: combined.secureRejected)
    }
    let result: Aggregator.Result
    if combined.tally.counts.reported >= configuration.plan.server.cohort.minimumReports {
      result = await aggregator.finish(
        round: round, combined: combined.aggregate, secureSum: secure, global: global,
        privacy: pipeline.configuration.privacy, clip: pipeline.clipNorm)
    } else {
      result = Aggregator.Result(
        model: nil, strategyState: strategyState,
        aggregation: RoundPipeline.Aggregation(producedModel: false))
    }
    let (closed, actions) = pipeline.aggregated(round: round, result.aggregation, now: clock.now)
    var record = closed.record
    if let model = result.model, let evaluator, closed.evaluate {
      let e = await evaluator.evaluate(model)
      record.evalLoss = e.loss
      record.evalAccuracy = e.accuracy
    }
    var state = SnapshotWriter()
    result.strategyState.save(into: &state)
    do throws(ReplicaLink.CommitRefusal) {
      try await link.commit(
        record, checkpoint: result.model, devices: closed.participants, strategyState: Data(state.bytes),
        secureAggregation: result.aggregation.secureSteps, attempts: configuration.commitAttempts,
        backoff: configuration.commitBackoff)
    } catch {
      switch error {
      case .fenced:
        logger.warning("another replica took the lead before round \(round) was committed; following it")
        // A round without a model has closed here already; one with a model waits for the decision.
        if result.model == nil { break }
        return false
      case .failed(let cause):
        failure = .commitAbandoned(round: round, attempts: configuration.commitAttempts, cause: cause)
        logger.critical("stopping: \(failure!.message)")
        await perform([])
        return true
      }
    }
    strategyState = result.strategyState
    if let model = result.model { adoptGlobal(model, round: round) }
    pending = ClosedRound(
      record: record, model: result.model, participants: closed.participants, lateReports: [:],
      secureAggregation: result.aggregation.secureSteps)
    _ = await takePending()
    await perform(actions)
    return true
  }
}
