// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @title KrewToken
/// @notice The KREW ERC-20 token that miners stake and are rewarded in.
/// @dev Only holders of MINTER_ROLE mint; the orchestrator is never given a role here.
contract KrewToken is ERC20, AccessControl {
    /// @notice Role allowed to mint new KREW.
    bytes32 public constant MINTER_ROLE = keccak256("MINTER_ROLE");

    /// @param admin The account that administers roles and may mint.
    constructor(address admin) ERC20("krewe", "KREW") {
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(MINTER_ROLE, admin);
    }

    /// @notice Mint `amount` KREW (in wei) to `to`.
    /// @param to The receiver of the new tokens.
    /// @param amount The amount in wei.
    function mint(address to, uint256 amount) external onlyRole(MINTER_ROLE) {
        _mint(to, amount);
    }
}
