/* Shared declarations for the acceptance-test modules. */
#ifndef HOARD_ACCEPTANCE_MOD_H
#define HOARD_ACCEPTANCE_MOD_H
unsigned long mod_00(unsigned long);
unsigned long mod_01(unsigned long);
unsigned long mod_02(unsigned long);
unsigned long mod_03(unsigned long);
unsigned long mod_04(unsigned long);
unsigned long mod_05(unsigned long);
unsigned long mod_06(unsigned long);
unsigned long mod_07(unsigned long);
unsigned long mod_08(unsigned long);
unsigned long mod_09(unsigned long);
unsigned long mod_10(unsigned long);
unsigned long mod_11(unsigned long);
unsigned long mod_12(unsigned long);
unsigned long mod_13(unsigned long);
unsigned long mod_14(unsigned long);
unsigned long mod_15(unsigned long);
#endif
