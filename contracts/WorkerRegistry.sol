// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";

/// @title WorkerRegistry
/// @notice Miners stake KREW here to become active workers, and leave through an unbonding delay.
/// @dev A worker is active while its stake lies within [minStake, maxStake] and it has not asked
///      to exit. Pausing stops new stakes and exit requests; withdrawing after the delay always
///      works, so the admin can never trap a stake. The orchestrator has no role in this contract.
contract WorkerRegistry is AccessControl, Pausable {
    using SafeERC20 for IERC20;

    struct Worker {
        uint256 stake;
        uint64 exitRequestedAt; // 0 while not exiting
    }

    /// @notice The staked token (KREW).
    IERC20 public immutable token;
    /// @notice Seconds between an exit request and the withdrawal it allows.
    uint64 public immutable unbondingDelay;
    /// @notice Smallest stake of an active worker, in wei.
    uint256 public minStake;
    /// @notice Largest stake of an active worker, in wei.
    uint256 public maxStake;

    mapping(address worker => Worker) private _workers;

    /// @notice `worker` staked `amount`, and now has `total` staked.
    event Staked(address indexed worker, uint256 amount, uint256 total);
    /// @notice `worker` asked to exit; its stake can be withdrawn from `withdrawableAt`.
    event ExitRequested(address indexed worker, uint256 withdrawableAt);
    /// @notice `worker` withdrew its whole stake of `amount`.
    event Withdrawn(address indexed worker, uint256 amount);
    /// @notice The admin set new stake bounds.
    event StakeBoundsSet(uint256 minStake, uint256 maxStake);

    /// @notice The bounds are not a valid range.
    error InvalidStakeBounds(uint256 minStake, uint256 maxStake);
    /// @notice Staking `amount` would leave the stake at `total`, outside [minStake, maxStake].
    error StakeOutOfBounds(uint256 total, uint256 minStake, uint256 maxStake);
    /// @notice A stake of zero was offered.
    error ZeroAmount();
    /// @notice The worker has asked to exit and cannot stake or ask again.
    error AlreadyExiting(address worker);
    /// @notice The worker has no stake.
    error NotStaked(address worker);
    /// @notice The worker has not asked to exit.
    error NotExiting(address worker);
    /// @notice The unbonding delay has not passed yet.
    error StillUnbonding(address worker, uint256 withdrawableAt);

    /// @param admin The account that sets the bounds and may pause.
    /// @param stakeToken The token to stake.
    /// @param minStake_ Smallest active stake, in wei.
    /// @param maxStake_ Largest active stake, in wei.
    /// @param unbondingDelay_ Seconds from an exit request to the withdrawal.
    constructor(address admin, IERC20 stakeToken, uint256 minStake_, uint256 maxStake_, uint64 unbondingDelay_) {
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        token = stakeToken;
        unbondingDelay = unbondingDelay_;
        _setStakeBounds(minStake_, maxStake_);
    }

    /// @notice Stake `amount` more KREW (approve this contract first); registers a new worker.
    /// @param amount The amount in wei; the total stake must end within [minStake, maxStake].
    function stake(uint256 amount) external whenNotPaused {
        if (amount == 0) revert ZeroAmount();
        Worker storage worker = _workers[msg.sender];
        if (worker.exitRequestedAt != 0) revert AlreadyExiting(msg.sender);
        uint256 total = worker.stake + amount;
        if (total < minStake || total > maxStake) revert StakeOutOfBounds(total, minStake, maxStake);
        worker.stake = total;
        emit Staked(msg.sender, amount, total);
        token.safeTransferFrom(msg.sender, address(this), amount);
    }

    /// @notice Stop being an active worker now; the stake can be withdrawn after the unbonding delay.
    function requestExit() external whenNotPaused {
        Worker storage worker = _workers[msg.sender];
        if (worker.stake == 0) revert NotStaked(msg.sender);
        if (worker.exitRequestedAt != 0) revert AlreadyExiting(msg.sender);
        worker.exitRequestedAt = uint64(block.timestamp);
        emit ExitRequested(msg.sender, block.timestamp + unbondingDelay);
    }

    /// @notice Withdraw the whole stake once the unbonding delay has passed.
    function withdraw() external {
        Worker memory worker = _workers[msg.sender];
        if (worker.exitRequestedAt == 0) revert NotExiting(msg.sender);
        uint256 withdrawableAt = uint256(worker.exitRequestedAt) + unbondingDelay;
        if (block.timestamp < withdrawableAt) revert StillUnbonding(msg.sender, withdrawableAt);
        delete _workers[msg.sender];
        emit Withdrawn(msg.sender, worker.stake);
        token.safeTransfer(msg.sender, worker.stake);
    }

    /// @notice Set the bounds an active worker's stake must lie within.
    /// @param minStake_ Smallest active stake, in wei (at least 1).
    /// @param maxStake_ Largest active stake, in wei.
    function setStakeBounds(uint256 minStake_, uint256 maxStake_) external onlyRole(DEFAULT_ADMIN_ROLE) {
        _setStakeBounds(minStake_, maxStake_);
    }

    /// @notice Stop new stakes and exit requests.
    function pause() external onlyRole(DEFAULT_ADMIN_ROLE) {
        _pause();
    }

    /// @notice Allow stakes and exit requests again.
    function unpause() external onlyRole(DEFAULT_ADMIN_ROLE) {
        _unpause();
    }

    /// @notice Whether `worker` may serve jobs: staked within bounds and not exiting.
    /// @param worker The worker's address.
    /// @return True when active.
    function isActive(address worker) external view returns (bool) {
        Worker memory w = _workers[worker];
        return w.exitRequestedAt == 0 && w.stake >= minStake && w.stake <= maxStake;
    }

    /// @notice The stake of `worker` and when it asked to exit (0 if it has not).
    /// @param worker The worker's address.
    /// @return staked The stake in wei.
    /// @return exitRequestedAt The time of the exit request, or 0.
    function workerInfo(address worker) external view returns (uint256 staked, uint64 exitRequestedAt) {
        Worker memory w = _workers[worker];
        return (w.stake, w.exitRequestedAt);
    }

    function _setStakeBounds(uint256 minStake_, uint256 maxStake_) private {
        if (minStake_ == 0 || minStake_ > maxStake_) revert InvalidStakeBounds(minStake_, maxStake_);
        minStake = minStake_;
        maxStake = maxStake_;
        emit StakeBoundsSet(minStake_, maxStake_);
    }
}
